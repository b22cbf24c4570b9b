package restart

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"syscall"
	"time"
)

// spawn execs Path as the leader of a new process group and records it in the PID file. Called with op
// held.
func (e *Exec) spawn() error {
	cmd := exec.Command(e.path, e.args...)
	cmd.Env = e.env
	cmd.Dir = e.dir
	cmd.Stdout = e.stdout
	cmd.Stderr = e.stderr
	cmd.WaitDelay = waitDelay
	setProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("failed to start %s: %w", e.path, err)
	}
	p := &process{
		pid:     cmd.Process.Pid,
		started: e.now(),
		exitCh:  make(chan Exit, 1),
		done:    make(chan struct{}),
	}
	if e.pidFile != "" {
		if err := writePIDFile(e.pidFile, p.pid); err != nil {
			// Without the record a crashed upgrader would start a second copy: do not run unrecorded.
			_ = signalGroup(p.pid, syscall.SIGKILL)
			_ = cmd.Wait()
			return fmt.Errorf("failed to start %s: %w", e.path, err)
		}
	}
	e.mu.Lock()
	e.cur = p
	e.mu.Unlock()
	e.logger.Info("started", "path", e.path, "args", e.args, "pid", p.pid)
	go e.reap(p, cmd)
	return nil
}

// stop ends p and its process group: sig, then (unless sig is SIGKILL) a wait bounded by KillTimeout
// and ctx, then SIGKILL and a wait bounded by killWait. Called with op held.
func (e *Exec) stop(ctx context.Context, p *process, sig syscall.Signal) error {
	p.requested.Store(true)
	start := e.now()
	log := e.logger.With("pid", p.pid, "adopted", p.adopted)
	if p.ended() {
		// Signal the group only while it has members: they keep its id reserved, so the signal cannot
		// reach a process that reused the number.
		if members, err := groupMembers(p.pid); err == nil && len(members) == 0 {
			return e.forget(p)
		}
	}
	if sig != syscall.SIGKILL {
		if err := signalGroup(p.pid, sig); err != nil {
			return fmt.Errorf("failed to send %v to process group %d: %w", sig, p.pid, err)
		}
		log.Info("stopping", "signal", sig, "timeout", e.killTimeout)
		graceCtx, cancel := context.WithTimeout(ctx, e.killTimeout)
		gone := e.waitGone(graceCtx, p)
		cancel()
		if gone {
			log.Info("stopped", "elapsed", e.now().Sub(start))
			return e.forget(p)
		}
		log.Warn("process or members of its group still running after the graceful signal: sending SIGKILL",
			"elapsed", e.now().Sub(start), "ctx_err", ctx.Err())
	}
	if err := signalGroup(p.pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("failed to send SIGKILL to process group %d: %w", p.pid, err)
	}
	killCtx, cancel := context.WithTimeout(context.Background(), killWait)
	defer cancel()
	if !e.waitGone(killCtx, p) {
		return fmt.Errorf("failed to stop process group %d: %w", p.pid, ErrNotStopped)
	}
	log.Info("killed", "elapsed", e.now().Sub(start))
	return e.forget(p)
}

// waitGone waits until p has ended and its process group is empty, or ctx ends.
func (e *Exec) waitGone(ctx context.Context, p *process) bool {
	tick := time.NewTicker(groupPoll)
	defer tick.Stop()
	for {
		if p.ended() {
			members, err := groupMembers(p.pid)
			if err == nil && len(members) == 0 {
				return true
			}
		} else if p.adopted {
			// The watcher may have stopped (Close); check directly.
			e.checkAdopted(p)
		}
		select {
		case <-ctx.Done():
			return false
		case <-p.done:
		case <-tick.C:
		}
	}
}

// forget drops p as the current process and removes its PID file record.
func (e *Exec) forget(p *process) error {
	e.mu.Lock()
	if e.cur == p {
		e.cur = nil
	}
	e.mu.Unlock()
	return removePIDFile(e.pidFile, p.pid)
}

// reap waits for a child we started and reports its exit.
func (e *Exec) reap(p *process, cmd *exec.Cmd) {
	err := cmd.Wait()
	ex := Exit{Pid: p.pid, Code: -1}
	if st := cmd.ProcessState; st != nil {
		ex.Code = st.ExitCode()
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			ex.Signal = ws.Signal()
		}
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		ex.Err = err
	}
	e.exited(p, ex)
}

// finish records p's exit once (the reaper, the adopted-process watcher and Stop may all see it) and
// reports it on p.exitCh. It returns the recorded Exit and whether this call recorded it.
func (e *Exec) finish(p *process, ex Exit) (Exit, bool) {
	first := false
	p.finishOnce.Do(func() {
		first = true
		ex.Requested = p.requested.Load()
		ex.Adopted = p.adopted
		p.exit = ex
		close(p.done)
		if !ex.Requested {
			kv := []any{"pid", p.pid, "code", ex.Code, "adopted", p.adopted, "ran", e.now().Sub(p.started)}
			if ex.Signal != 0 {
				kv = append(kv, "signal", ex.Signal.String())
			}
			e.logger.Error("exited unexpectedly", kv...)
			if err := removePIDFile(e.pidFile, p.pid); err != nil {
				e.logger.Warn("failed to clear the PID file", "error", err)
			}
		}
		p.exitCh <- ex // buffered: never blocks
	})
	return p.exit, first
}

// exited is called by the goroutine that owns p (reaper or watcher) when p has ended.
func (e *Exec) exited(p *process, ex Exit) {
	if ex, first := e.finish(p, ex); first && !ex.Requested && e.policy != nil {
		e.autoRestart(p)
	}
}
