package testcluster

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Polling backoff: start fast (a loopback agent answers in milliseconds), cap at a second.
const (
	pollInitial = 50 * time.Millisecond
	pollMax     = time.Second
	// attemptTimeout bounds one round of HTTP calls inside a wait.
	attemptTimeout = 5 * time.Second
)

// permanentError stops a poll at once (the agent exited: waiting longer cannot help).
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

func permanent(err error) error { return permanentError{err} }

// withDefaultDeadline gives ctx a DefaultWaitTimeout deadline when it has none.
func withDefaultDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, DefaultWaitTimeout)
}

// poll calls check until it returns nil, a permanent error, or ctx ends, backing off between attempts.
// Each attempt gets its own attemptTimeout. The returned error names what was awaited and the last reason.
func poll(ctx context.Context, what string, check func(ctx context.Context) error) error {
	ctx, cancel := withDefaultDeadline(ctx)
	defer cancel()
	delay := pollInitial
	var last error
	for {
		actx, acancel := context.WithTimeout(ctx, attemptTimeout)
		err := check(actx)
		acancel()
		if err == nil {
			return nil
		}
		var perm permanentError
		if errors.As(err, &perm) {
			return fmt.Errorf("failed to wait for %s: %w", what, perm.err)
		}
		last = err
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("failed to wait for %s: %w (last: %w)", what, ctx.Err(), last)
		case <-timer.C:
		}
		delay = min(delay*2, pollMax)
	}
}
