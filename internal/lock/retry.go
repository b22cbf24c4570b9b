package lock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/upgrader-dev/upgrader/internal/consulconn"
)

// Clock is the time source of a Lock's loops.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives after d, and a stop function.
	After(d time.Duration) (<-chan time.Time, func() bool)
}

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

func (wallClock) After(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// sleep waits d or until ctx is done (then it returns ctx.Err()).
func sleep(ctx context.Context, c Clock, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	ch, stop := c.After(d)
	defer stop()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// backoff is a capped exponential backoff with jitter.
type backoff struct {
	min, max time.Duration
	cur      time.Duration
}

func newBackoff() *backoff { return &backoff{min: 100 * time.Millisecond, max: 2 * time.Second} }

// next returns the next delay: min, 2·min, ... up to max, each ±20%.
func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	jitter := time.Duration(rand.Int64N(int64(b.cur)/5+1)) - b.cur/10
	return b.cur + jitter
}

func (b *backoff) reset() { b.cur = 0 }

// isTransient reports whether err is worth retrying against Consul: the agent or cluster is unreachable or
// has no leader for a moment. Permission errors, bad requests and a done context are not transient.
func isTransient(err error) bool {
	if consulconn.IsConnectionError(err) { // first: an agent that never answered wraps a cancellation
		return true
	}
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var se api.StatusError
	if errors.As(err, &se) {
		switch se.Code {
		case 429, 500, 502, 503, 504:
			return true
		}
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	// Some api calls (Session.Renew) report status codes as plain strings.
	msg := err.Error()
	for _, code := range []string{"500", "502", "503", "504", "429"} {
		if strings.Contains(msg, "Unexpected response code: "+code) {
			return true
		}
	}
	return strings.Contains(msg, "No cluster leader")
}

// retry runs f until it succeeds, fails for good, or ctx is done, backing off between transient failures.
func retry(ctx context.Context, c Clock, onRetry func(error), f func(context.Context) error) error {
	bo := newBackoff()
	for {
		err := f(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return withCtxErr(ctx.Err(), err)
		}
		if !isTransient(err) {
			return err
		}
		if onRetry != nil {
			onRetry(err)
		}
		if serr := sleep(ctx, c, bo.next()); serr != nil {
			return withCtxErr(serr, err)
		}
	}
}

// withCtxErr makes err match the context's error too, on one line.
func withCtxErr(ctxErr, err error) error {
	if errors.Is(err, ctxErr) {
		return err
	}
	return fmt.Errorf("%w (last error: %w)", ctxErr, err)
}
