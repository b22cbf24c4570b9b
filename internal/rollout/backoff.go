package rollout

import (
	"context"
	"math/rand/v2"
	"time"
)

// backoff waits exponentially longer between attempts, with jitter, and gives up when ctx ends.
// Not safe for concurrent use; make one per loop.
type backoff struct {
	min, max time.Duration
	next     time.Duration
}

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max} }

// wait sleeps for the next interval (half fixed, half random) or until ctx is done.
func (b *backoff) wait(ctx context.Context) error {
	switch {
	case b.next == 0:
		b.next = b.min
	default:
		b.next = min(b.next*2, b.max)
	}
	d := b.next/2 + rand.N(b.next/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (b *backoff) reset() { b.next = 0 }
