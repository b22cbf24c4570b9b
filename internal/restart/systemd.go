package restart

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

const (
	// DefaultActiveTimeout bounds the wait for the unit to report active after `systemctl restart`
	// returned: systemd's own default start timeout is 90 s.
	DefaultActiveTimeout = 90 * time.Second
	// DefaultActivePoll is how often `systemctl is-active` is asked.
	DefaultActivePoll = 500 * time.Millisecond
)

// Systemd restarts the agent's systemd unit with `systemctl restart <unit>` and then waits until
// `systemctl is-active <unit>` answers "active".
type Systemd struct {
	// Unit is the unit name, for example "consul.service".
	Unit string
	// Systemctl is the systemctl binary; default "systemctl" from PATH.
	Systemctl string
	// ActiveTimeout bounds the is-active wait; default DefaultActiveTimeout.
	ActiveTimeout time.Duration
	// PollInterval is the is-active polling interval; default DefaultActivePoll.
	PollInterval time.Duration
	// Logger receives progress; it is Named("systemd").
	Logger hclog.Logger
}

// Restart runs `systemctl restart <unit>` (its output goes into the error) and waits, bounded by ctx and
// ActiveTimeout, for the unit to be active. A unit that reports "failed" or "inactive" fails at once.
func (s Systemd) Restart(ctx context.Context) error {
	if s.Unit == "" {
		return fmt.Errorf("failed to restart a systemd unit: %w", ErrMissingCommand)
	}
	systemctl := s.Systemctl
	if systemctl == "" {
		systemctl = "systemctl"
	}
	logger := s.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	logger = logger.Named("systemd").With("unit", s.Unit)
	start := time.Now()
	if _, err := run(ctx, []string{systemctl, "restart", s.Unit}, nil, "", 0); err != nil {
		return fmt.Errorf("failed to restart unit %s: %w", s.Unit, err)
	}
	logger.Info("restart returned", "elapsed", time.Since(start))

	timeout := s.ActiveTimeout
	if timeout <= 0 {
		timeout = DefaultActiveTimeout
	}
	poll := s.PollInterval
	if poll <= 0 {
		poll = DefaultActivePoll
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(poll)
	defer tick.Stop()
	var state string
	timedOut := func() error {
		return fmt.Errorf("failed to see unit %s active within %v (last state %q): %w: %w",
			s.Unit, timeout, state, ErrNotActive, ctx.Err())
	}
	for {
		out, err := run(ctx, []string{systemctl, "is-active", s.Unit}, nil, "", 0)
		if ctx.Err() != nil {
			return timedOut()
		}
		state = strings.TrimSpace(out)
		var ce *CommandError
		switch {
		case state == "active":
			logger.Info("active", "elapsed", time.Since(start))
			return nil
		case state == "failed" || state == "inactive":
			return fmt.Errorf("failed to start unit %s: %w: is-active says %q", s.Unit, ErrNotActive, state)
		case err != nil && !errors.As(err, &ce):
			return fmt.Errorf("failed to ask whether unit %s is active: %w", s.Unit, err)
		case err != nil && ce.ExitCode < 0:
			// Killed by the deadline, or did not start.
			return fmt.Errorf("failed to ask whether unit %s is active: %w", s.Unit, err)
		}
		logger.Debug("waiting for the unit", "state", state)
		select {
		case <-ctx.Done():
			return timedOut()
		case <-tick.C:
		}
	}
}
