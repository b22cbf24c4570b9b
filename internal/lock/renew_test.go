package lock

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"
)

// fakeClock jumps forward by exactly the requested delay whenever a timer is asked for.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) (<-chan time.Time, func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d > 0 {
		c.now = c.now.Add(d)
	}
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch, func() bool { return false }
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// scriptedRenew answers Renew from a script; each step may also advance the clock (a slow request). When
// the script runs out it cancels the run.
type scriptedRenew struct {
	clock  *fakeClock
	steps  []renewStep
	cancel context.CancelFunc
	calls  []time.Time
}

type renewStep struct {
	entry *api.SessionEntry
	err   error
	takes time.Duration
}

var (
	ok500 = renewStep{err: errors.New("Unexpected response code: 500")}
	okOK  = renewStep{entry: &api.SessionEntry{ID: "s", TTL: "15s"}}
	ok404 = renewStep{}
	ok403 = renewStep{err: errors.New("Unexpected response code: 403")}
)

func (s *scriptedRenew) Renew(id string, q *api.WriteOptions) (*api.SessionEntry, *api.WriteMeta, error) {
	s.calls = append(s.calls, s.clock.Now())
	if len(s.calls) > len(s.steps) {
		s.cancel()
		return nil, nil, context.Canceled
	}
	st := s.steps[len(s.calls)-1]
	s.clock.advance(st.takes)
	return st.entry, &api.WriteMeta{}, st.err
}

func TestRenewer(t *testing.T) {
	ttl := 15 * time.Second
	repeat := func(s renewStep, n int) []renewStep {
		out := make([]renewStep, n)
		for i := range out {
			out[i] = s
		}
		return out
	}
	cases := []struct {
		name      string
		steps     []renewStep
		wantErr   error         // nil: ran until the script ended
		wantCalls int           // renewals attempted
		wantAt    time.Duration // for losses: when, measured from the start
	}{
		{name: "healthy renewals every ttl/3", steps: repeat(okOK, 5), wantCalls: 6},
		{name: "404 is a loss at once", steps: []renewStep{okOK, ok404}, wantErr: ErrSessionGone, wantCalls: 2, wantAt: 10 * time.Second},
		{name: "403 is a loss at once", steps: []renewStep{ok403}, wantErr: ErrLost, wantCalls: 1, wantAt: 5 * time.Second},
		{name: "an election is ridden out", steps: append(append([]renewStep{okOK}, repeat(ok500, 5)...), repeat(okOK, 3)...),
			wantCalls: 10},
		{name: "no renewal within ttl is a loss", steps: append([]renewStep{okOK}, repeat(ok500, 100)...),
			wantErr: ErrRenewDeadline, wantAt: 5*time.Second + ttl},
		{name: "a slow failing request is a loss as soon as it returns past the deadline",
			steps:   []renewStep{okOK, {err: ok500.err, takes: 14 * time.Second}, ok500},
			wantErr: ErrRenewDeadline, wantCalls: 2, wantAt: 10*time.Second + 14*time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			defer goleak.VerifyNone(t)
			start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			clock := &fakeClock{now: start}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			api := &scriptedRenew{clock: clock, steps: tc.steps, cancel: cancel}
			r := &renewer{api: api, id: "s", ttl: ttl, clock: clock, logger: hclog.NewNullLogger()}
			err := r.run(ctx, start)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("unexpected loss: %v", err)
				}
			} else {
				if !errors.Is(err, tc.wantErr) || !errors.Is(err, ErrLost) {
					t.Fatalf("want %v, got %v", tc.wantErr, err)
				}
				if at := clock.Now().Sub(start); at != tc.wantAt {
					t.Fatalf("lost at +%v, want +%v", at, tc.wantAt)
				}
			}
			if tc.wantCalls != 0 && len(api.calls) != tc.wantCalls {
				t.Fatalf("%d renewals, want %d", len(api.calls), tc.wantCalls)
			}
			// Healthy renewals are TTL/3 apart.
			if tc.name == "healthy renewals every ttl/3" {
				for i := 1; i < len(api.calls); i++ {
					if gap := api.calls[i].Sub(api.calls[i-1]); gap != ttl/3 {
						t.Fatalf("gap %d = %v", i, gap)
					}
				}
			}
		})
	}
}

func TestRenewerStopsOnCancel(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := &renewer{api: &scriptedRenew{}, id: "s", ttl: 15 * time.Second, clock: wallClock{}, logger: hclog.NewNullLogger()}
	if err := r.run(ctx, time.Now()); err != nil {
		t.Fatalf("cancel is not a loss: %v", err)
	}
}

func TestSleep(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := sleep(ctx, wallClock{}, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("sleep ignored ctx: %v", err)
	}
	if err := sleep(context.Background(), wallClock{}, time.Millisecond); err != nil {
		t.Fatal(err)
	}
}
