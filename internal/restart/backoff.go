package restart

import (
	"time"
)

// Backoff is Exec's auto-restart policy: after an unexpected exit the child is started again after
// Initial, doubling up to Max for each further crash; a process that ran for ResetAfter or longer
// starts the sequence over.
type Backoff struct {
	// Initial is the first delay; default 1s.
	Initial time.Duration
	// Max caps the delay; default 30s.
	Max time.Duration
	// ResetAfter is how long a process must run for its crash to count as a first one again; default
	// 1 minute.
	ResetAfter time.Duration
}

func (b Backoff) withDefaults() Backoff {
	if b.Initial <= 0 {
		b.Initial = time.Second
	}
	if b.Max <= 0 {
		b.Max = 30 * time.Second
	}
	if b.Max < b.Initial {
		b.Max = b.Initial
	}
	if b.ResetAfter <= 0 {
		b.ResetAfter = time.Minute
	}
	return b
}

// Delay is the wait before restart number attempt (0 for the first). Pure.
func (b Backoff) Delay(attempt int) time.Duration {
	b = b.withDefaults()
	d := b.Initial
	for range attempt {
		if d >= b.Max/2 {
			return b.Max
		}
		d *= 2
	}
	return min(d, b.Max)
}

// autoRestart waits out the backoff after p crashed and starts Path again, retrying (with growing
// delays) while the start itself fails. It gives up when Stop, Kill, Start, Restart or Close cancels
// it. It runs on p's reaper or watcher goroutine.
func (e *Exec) autoRestart(p *process) {
	cancel := make(chan struct{})
	e.mu.Lock()
	if e.closed || e.cur != p {
		e.mu.Unlock()
		return
	}
	if e.now().Sub(p.started) >= e.policy.ResetAfter {
		e.attempts = 0
	}
	if e.pending != nil {
		close(e.pending)
	}
	e.pending = cancel
	e.mu.Unlock()

	for {
		e.mu.Lock()
		attempt := e.attempts
		e.attempts++
		e.mu.Unlock()
		delay := e.policy.Delay(attempt)
		e.logger.Info("restarting after an unexpected exit", "pid", p.pid, "delay", delay, "attempt", attempt+1)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-cancel:
			t.Stop()
			return
		}
		if e.restartAfterCrash(cancel) {
			return
		}
	}
}

// restartAfterCrash starts Path unless the restart was cancelled meanwhile. It returns false when the
// start failed and should be retried.
func (e *Exec) restartAfterCrash(cancel chan struct{}) bool {
	e.op.Lock()
	defer e.op.Unlock()
	select {
	case <-cancel:
		return true
	default:
	}
	e.mu.Lock()
	if e.pending == cancel {
		e.pending = nil
	}
	e.mu.Unlock()
	if err := e.spawn(); err != nil {
		e.logger.Error("auto-restart failed", "error", err)
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.closed {
			return true
		}
		e.pending = cancel // let Stop, Start and Close cancel the retry
		return false
	}
	return true
}
