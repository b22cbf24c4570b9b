package health

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Clock is the time source of the waiting loops; tests inject a fake.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer the loops use.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// SystemClock is the real clock.
type SystemClock struct{}

// Now implements Clock.
func (SystemClock) Now() time.Time { return time.Now() }

// NewTimer implements Clock.
func (SystemClock) NewTimer(d time.Duration) Timer { return systemTimer{time.NewTimer(d)} }

type systemTimer struct{ t *time.Timer }

func (s systemTimer) C() <-chan time.Time { return s.t.C }
func (s systemTimer) Stop() bool          { return s.t.Stop() }

// ObserveFunc takes one sample; an error means the local agent did not answer.
type ObserveFunc func(ctx context.Context) (Observation, error)

// ErrGateNotPassed is matched (errors.Is) by every GateTimeoutError.
var ErrGateNotPassed = errors.New("health: gate did not pass")

// GateTimeoutError says a gate did not pass before its deadline. A timeout is a failure, never a pass.
type GateTimeoutError struct {
	// Gate names the gate ("server-confirm", "preflight", ...).
	Gate string
	// LastReasons are the reasons of the last failing sample (or the last observe error).
	LastReasons []string
	// Samples is how many samples were taken; Elapsed how long the wait lasted.
	Samples int
	Elapsed time.Duration
	// Cause is the context's error (context.DeadlineExceeded or context.Canceled).
	Cause error
}

var _ error = (*GateTimeoutError)(nil)

func (e *GateTimeoutError) Error() string {
	reasons := "no sample was judged"
	if len(e.LastReasons) > 0 {
		reasons = strings.Join(e.LastReasons, "; ")
	}
	return fmt.Sprintf("health: %s gate did not pass within %s (%d samples): %s", e.Gate, e.Elapsed.Round(time.Millisecond), e.Samples, reasons)
}

// Unwrap lets errors.Is match both ErrGateNotPassed and the context's error.
func (e *GateTimeoutError) Unwrap() []error { return []error{ErrGateNotPassed, e.Cause} }

// Option tunes Confirm and WaitUntil.
type Option func(*loopOptions)

type loopOptions struct {
	name     string
	logger   hclog.Logger
	logEvery time.Duration
	clock    Clock
}

// WithName names the gate in logs and errors.
func WithName(name string) Option { return func(o *loopOptions) { o.name = name } }

// WithLogger sets the logger (Named("health") is applied).
func WithLogger(l hclog.Logger) Option { return func(o *loopOptions) { o.logger = l } }

// WithLogEvery limits how often unchanged failing reasons are logged (default 10s).
func WithLogEvery(d time.Duration) Option { return func(o *loopOptions) { o.logEvery = d } }

// WithClock sets the clock of WaitUntil (Confirm takes it as an argument).
func WithClock(c Clock) Option { return func(o *loopOptions) { o.clock = c } }

func buildOptions(opts []Option) loopOptions {
	o := loopOptions{name: "gate", logEvery: 10 * time.Second, clock: SystemClock{}}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = hclog.NewNullLogger()
	}
	o.logger = o.logger.Named("health").With("gate", o.name)
	if o.clock == nil {
		o.clock = SystemClock{}
	}
	return o
}

// ConfirmReport tells how a confirmation went, for logs and the node's status record.
type ConfirmReport struct {
	// Samples counts every sample; Failed those that failed (including observe errors).
	Samples, Failed int
	// Elapsed is from the start of Confirm to its end.
	Elapsed time.Duration
	// PassingSince is the time of the first sample of the final passing streak (zero if none).
	PassingSince time.Time
	// FirstAnswer is when the local agent first answered (zero if never).
	FirstAnswer time.Time
	// Seen counts how many samples failed for each distinct reason (numbers inside reasons are kept,
	// so a lagging index shows up as several entries).
	Seen map[string]int
	// Last is the last verdict.
	Last Verdict
}

// SeenReasons lists Seen sorted by count, most frequent first.
func (r ConfirmReport) SeenReasons() []string {
	out := make([]string, 0, len(r.Seen))
	for reason := range r.Seen {
		out = append(out, reason)
	}
	sort.Slice(out, func(i, j int) bool {
		if r.Seen[out[i]] != r.Seen[out[j]] {
			return r.Seen[out[i]] > r.Seen[out[j]]
		}
		return out[i] < out[j]
	})
	for i, reason := range out {
		out[i] = fmt.Sprintf("%dx %s", r.Seen[reason], reason)
	}
	return out
}

// Confirm passes only when gate has passed on every sample, continuously, for window: the streak starts
// at the first passing sample and any failing sample (or observe error, such as the local agent not
// answering yet) resets it, so only samples taken after the agent answers again count. Samples are taken
// every interval. When ctx ends first, Confirm returns a *GateTimeoutError: a timeout is never a pass.
// A window of 0 passes on the first passing sample.
func Confirm(ctx context.Context, observe ObserveFunc, gate GateFunc, window, interval time.Duration, clock Clock, opts ...Option) (ConfirmReport, error) {
	o := buildOptions(append(opts, WithClock(clock)))
	clock = o.clock
	start := clock.Now()
	rep := ConfirmReport{Seen: map[string]int{}}
	var streak time.Time
	var lastReasons []string
	var lastLog time.Time

	for {
		if err := ctx.Err(); err != nil {
			rep.Elapsed = clock.Now().Sub(start)
			return rep, &GateTimeoutError{Gate: o.name, LastReasons: lastReasons, Samples: rep.Samples, Elapsed: rep.Elapsed, Cause: err}
		}
		obs, err := observe(ctx)
		now := clock.Now()
		rep.Samples++
		var v Verdict
		if err != nil {
			v = Verdict{Reasons: []string{"the local agent does not answer: " + err.Error()}}
		} else {
			if rep.FirstAnswer.IsZero() {
				rep.FirstAnswer = now
			}
			v = gate(obs, now)
		}
		rep.Last = v

		// A sample that completes after the deadline says nothing: the gate timed out.
		if cerr := ctx.Err(); cerr != nil {
			rep.Elapsed = now.Sub(start)
			if !v.Pass {
				lastReasons = v.Reasons
			}
			return rep, &GateTimeoutError{Gate: o.name, LastReasons: lastReasons, Samples: rep.Samples, Elapsed: rep.Elapsed, Cause: cerr}
		}

		if v.Pass {
			if streak.IsZero() {
				streak = now
				o.logger.Debug("gate passed, holding it for the window", "window", window)
			}
			if now.Sub(streak) >= window {
				rep.PassingSince = streak
				rep.Elapsed = now.Sub(start)
				o.logger.Info("gate held for the window", "window", window, "elapsed", rep.Elapsed, "samples", rep.Samples, "failed", rep.Failed)
				return rep, nil
			}
		} else {
			rep.Failed++
			for _, r := range v.Reasons {
				rep.Seen[r]++
			}
			if !streak.IsZero() {
				o.logger.Info("gate failed inside the window, starting over", "held", now.Sub(streak), "reasons", v.Reasons)
			}
			streak = time.Time{}
			lastReasons = v.Reasons
			lastLog = logReasons(o, now, lastLog, v.Reasons)
		}

		if err := sleep(ctx, clock, interval); err != nil {
			rep.Elapsed = clock.Now().Sub(start)
			return rep, &GateTimeoutError{Gate: o.name, LastReasons: lastReasons, Samples: rep.Samples, Elapsed: rep.Elapsed, Cause: err}
		}
	}
}

// WaitUntil samples every interval until gate passes once, waiting (not failing) while it does not and
// logging the reasons at most every WithLogEvery. It returns the passing observation, or a
// *GateTimeoutError when ctx ends first.
func WaitUntil(ctx context.Context, observe ObserveFunc, gate GateFunc, interval time.Duration, opts ...Option) (Observation, Verdict, error) {
	o := buildOptions(opts)
	start := o.clock.Now()
	var lastReasons []string
	var lastLog time.Time
	samples := 0
	for {
		if err := ctx.Err(); err != nil {
			return Observation{}, Verdict{Reasons: lastReasons}, &GateTimeoutError{Gate: o.name, LastReasons: lastReasons, Samples: samples, Elapsed: o.clock.Now().Sub(start), Cause: err}
		}
		obs, err := observe(ctx)
		now := o.clock.Now()
		samples++
		var v Verdict
		if err != nil {
			v = Verdict{Reasons: []string{"the local agent does not answer: " + err.Error()}}
		} else {
			v = gate(obs, now)
		}
		if cerr := ctx.Err(); cerr != nil {
			if !v.Pass {
				lastReasons = v.Reasons
			}
			return Observation{}, Verdict{Reasons: lastReasons}, &GateTimeoutError{Gate: o.name, LastReasons: lastReasons, Samples: samples, Elapsed: now.Sub(start), Cause: cerr}
		}
		if v.Pass {
			if samples > 1 {
				o.logger.Info("gate passed", "waited", now.Sub(start), "samples", samples)
			}
			return obs, v, nil
		}
		lastReasons = v.Reasons
		lastLog = logReasons(o, now, lastLog, v.Reasons)
		if err := sleep(ctx, o.clock, interval); err != nil {
			return Observation{}, Verdict{Reasons: lastReasons}, &GateTimeoutError{Gate: o.name, LastReasons: lastReasons, Samples: samples, Elapsed: o.clock.Now().Sub(start), Cause: err}
		}
	}
}

// logReasons logs failing reasons at most once every logEvery (reasons carry indexes and durations, so
// they change on nearly every sample and are not a useful trigger).
func logReasons(o loopOptions, now, lastLog time.Time, reasons []string) time.Time {
	if !lastLog.IsZero() && now.Sub(lastLog) < o.logEvery {
		return lastLog
	}
	o.logger.Info("waiting: gate not passing", "reasons", strings.Join(reasons, "; "))
	return now
}

// sleep waits d on clock, or returns ctx's error.
func sleep(ctx context.Context, clock Clock, d time.Duration) error {
	t := clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}
