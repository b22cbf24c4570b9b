package health

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"
)

// fakeClock advances only when asked: a timer fires at once after moving the clock forward by its
// duration, so a loop with an interval runs as fast as the CPU allows with exact, repeatable times.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.Advance(d)
	ch := make(chan time.Time, 1)
	ch <- c.Now()
	return firedTimer{ch}
}

type firedTimer struct{ ch chan time.Time }

func (f firedTimer) C() <-chan time.Time { return f.ch }
func (f firedTimer) Stop() bool          { return false }

// step is one scripted sample: an observe error, or a verdict; took advances the clock during the call;
// block makes the call wait for the context to end (a hung HTTP call) and then return the sample anyway.
type step struct {
	err   error
	pass  bool
	why   string
	took  time.Duration
	block bool
}

// script turns steps into an ObserveFunc and a GateFunc; after the last step the last one repeats.
func script(clock *fakeClock, steps []step) (ObserveFunc, GateFunc, *int) {
	calls := 0
	observe := func(ctx context.Context) (Observation, error) {
		s := steps[min(calls, len(steps)-1)]
		calls++
		clock.Advance(s.took)
		if s.block {
			<-ctx.Done()
		}
		if s.err != nil {
			return Observation{}, s.err
		}
		reason := s.why
		if reason == "" {
			reason = "not yet"
		}
		// The verdict rides in the observation so the gate stays a pure function of it.
		return Observation{At: clock.Now(), LocalLeader: boolWord(s.pass), Members: []Member{{Name: reason}}}, nil
	}
	gate := func(obs Observation, _ time.Time) Verdict {
		if obs.LocalLeader == "pass" {
			return Verdict{Pass: true}
		}
		return Verdict{Reasons: []string{obs.Members[0].Name}}
	}
	return observe, gate, &calls
}

func boolWord(b bool) string {
	if b {
		return "pass"
	}
	return "fail"
}

func repeat(n int, s step) []step {
	out := make([]step, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func concat(parts ...[]step) []step {
	var out []step
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

var errDown = errors.New("dial tcp 127.0.0.1:8500: connect: connection refused")

func TestConfirm(t *testing.T) {
	defer goleak.VerifyNone(t)
	pass := step{pass: true}
	for _, tc := range []struct {
		name         string
		steps        []step
		window       time.Duration
		wantSamples  int
		wantFailed   int
		wantElapsed  time.Duration
		wantSeen     map[string]int
		wantFirstAns time.Duration // offset of the first answer from the start
	}{
		{name: "passes once held for the window", steps: []step{pass}, window: 5 * time.Second,
			wantSamples: 6, wantElapsed: 5 * time.Second, wantSeen: map[string]int{}},
		{name: "window zero passes on the first passing sample", steps: []step{{why: "a"}, pass}, window: 0,
			wantSamples: 2, wantFailed: 1, wantElapsed: time.Second, wantSeen: map[string]int{"a": 1}},
		{name: "resets and starts over after each failure",
			steps:       concat(repeat(3, pass), []step{{why: "non-voter"}}, repeat(3, pass), []step{{why: "lagging"}}, []step{pass}),
			window:      3 * time.Second,
			wantSamples: 12, wantFailed: 2, wantElapsed: 11 * time.Second, wantSeen: map[string]int{"non-voter": 1, "lagging": 1}},
		{name: "samples before the agent answers never count",
			steps:       concat(repeat(3, step{err: errDown}), []step{pass}),
			window:      2 * time.Second,
			wantSamples: 6, wantFailed: 3, wantElapsed: 5 * time.Second, wantFirstAns: 3 * time.Second,
			wantSeen: map[string]int{"the local agent does not answer: " + errDown.Error(): 3}},
		{name: "slow samples count by their completion time",
			steps:       []step{{pass: true, took: 2 * time.Second}},
			window:      5 * time.Second,
			wantSamples: 3, wantElapsed: 8 * time.Second, wantSeen: map[string]int{}, wantFirstAns: 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{now: t0}
			observe, gate, _ := script(clock, tc.steps)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			rep, err := Confirm(ctx, observe, gate, tc.window, time.Second, clock, WithName("test"), WithLogger(testLogger(t)))
			if err != nil {
				t.Fatalf("Confirm: %v", err)
			}
			if rep.Samples != tc.wantSamples || rep.Failed != tc.wantFailed || rep.Elapsed != tc.wantElapsed {
				t.Errorf("samples %d failed %d elapsed %s; want %d %d %s", rep.Samples, rep.Failed, rep.Elapsed, tc.wantSamples, tc.wantFailed, tc.wantElapsed)
			}
			if !rep.Last.Pass {
				t.Errorf("last verdict does not pass: %+v", rep.Last)
			}
			if got := rep.FirstAnswer.Sub(t0); got != tc.wantFirstAns {
				t.Errorf("first answer at +%s, want +%s", got, tc.wantFirstAns)
			}
			if len(rep.Seen) != len(tc.wantSeen) {
				t.Errorf("seen %v, want %v", rep.Seen, tc.wantSeen)
			}
			for k, n := range tc.wantSeen {
				if rep.Seen[k] != n {
					t.Errorf("seen[%q] = %d, want %d (all: %v)", k, rep.Seen[k], n, rep.SeenReasons())
				}
			}
		})
	}
}

func TestConfirmTimeoutIsAFailure(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, tc := range []struct {
		name        string
		steps       []step
		window      time.Duration
		wantReasons []string
	}{
		{name: "never passes", window: time.Second,
			steps:       concat(repeat(5, step{why: "failure tolerance is 0, it was 1"}), []step{{why: "last one", block: true}}),
			wantReasons: []string{"last one"}},
		{name: "passing but the window is not reached", window: time.Hour,
			steps:       concat([]step{{why: "non-voter"}}, repeat(3, step{pass: true}), []step{{pass: true, block: true}}),
			wantReasons: []string{"non-voter"}},
		{name: "a pass that completes after the deadline is no pass", window: 10 * time.Second,
			steps:       concat([]step{{why: "agent down"}}, repeat(3, step{pass: true}), []step{{pass: true, block: true, took: time.Minute}}),
			wantReasons: []string{"agent down"}},
		{name: "agent never answers", window: time.Second,
			steps:       concat(repeat(2, step{err: errDown}), []step{{err: errDown, block: true}}),
			wantReasons: []string{"the local agent does not answer: " + errDown.Error()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{now: t0}
			observe, gate, calls := script(clock, tc.steps)
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			rep, err := Confirm(ctx, observe, gate, tc.window, time.Second, clock, WithName("server-confirm"))
			var gte *GateTimeoutError
			if !errors.As(err, &gte) {
				t.Fatalf("err = %v (%T), want *GateTimeoutError; report %+v", err, err, rep)
			}
			if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrGateNotPassed) {
				t.Errorf("err %v does not match DeadlineExceeded and ErrGateNotPassed", err)
			}
			if gte.Gate != "server-confirm" || gte.Samples != *calls {
				t.Errorf("gate %q samples %d, want server-confirm %d", gte.Gate, gte.Samples, *calls)
			}
			if strings.Join(gte.LastReasons, "|") != strings.Join(tc.wantReasons, "|") {
				t.Errorf("last reasons %q, want %q", gte.LastReasons, tc.wantReasons)
			}
			if !strings.Contains(err.Error(), "server-confirm gate did not pass") {
				t.Errorf("error text %q", err)
			}
		})
	}
}

func TestConfirmCanceledBeforeStart(t *testing.T) {
	clock := &fakeClock{now: t0}
	observe, gate, calls := script(clock, []step{{pass: true}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Confirm(ctx, observe, gate, 0, time.Second, clock)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrGateNotPassed) || *calls != 0 {
		t.Fatalf("err %v calls %d; want canceled before any sample", err, *calls)
	}
}

func TestWaitUntil(t *testing.T) {
	defer goleak.VerifyNone(t)
	clock := &fakeClock{now: t0}
	observe, gate, calls := script(clock, concat([]step{{err: errDown}}, repeat(24, step{why: "failure tolerance is 0"}), []step{{pass: true}}))
	var buf bytes.Buffer
	logger := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Info})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	obs, v, err := WaitUntil(ctx, observe, gate, time.Second, WithClock(clock), WithLogger(logger), WithLogEvery(10*time.Second), WithName("preflight"))
	if err != nil || !v.Pass || obs.LocalLeader != "pass" {
		t.Fatalf("WaitUntil = %+v, %+v, %v", obs, v, err)
	}
	if *calls != 26 {
		t.Errorf("calls = %d, want 26", *calls)
	}
	// 25 failing samples one second apart, logged at most every 10s: at +0s, +10s and +20s.
	if n := strings.Count(buf.String(), "waiting: gate not passing"); n != 3 {
		t.Errorf("logged %d waiting lines, want 3:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "health: waiting") || !strings.Contains(buf.String(), "gate=preflight") {
		t.Errorf("log lines are not named: %s", buf.String())
	}
}

func TestWaitUntilTimeout(t *testing.T) {
	defer goleak.VerifyNone(t)
	clock := &fakeClock{now: t0}
	observe, gate, _ := script(clock, concat(repeat(3, step{why: "server s3 did not answer"}), []step{{why: "server s3 did not answer", block: true}}))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, v, err := WaitUntil(ctx, observe, gate, time.Second, WithClock(clock))
	var gte *GateTimeoutError
	if !errors.As(err, &gte) || v.Pass {
		t.Fatalf("err = %v, verdict %+v; want a GateTimeoutError", err, v)
	}
	if len(gte.LastReasons) != 1 || gte.LastReasons[0] != "server s3 did not answer" {
		t.Errorf("last reasons %q", gte.LastReasons)
	}
}

func TestSystemClockSleepHonoursContext(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := sleep(ctx, SystemClock{}, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("sleep = %v", err)
	}
	if err := sleep(context.Background(), SystemClock{}, time.Millisecond); err != nil {
		t.Fatalf("sleep = %v", err)
	}
}

func testLogger(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug, Output: testWriter{t}})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
