package restart

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"time"
)

// deletedSuffix is what the kernel appends to /proc/<pid>/exe once the file the process was started
// from has been unlinked or renamed over (as install.Binary.Swap does).
const deletedSuffix = " (deleted)"

// adopt looks at the PID file and, when it names a live process that is our agent, makes it the current
// process and starts watching it. It returns (nil, nil) when there is nothing to adopt; a stale PID file
// is removed. Called with op held.
func (e *Exec) adopt() (*process, error) {
	if e.pidFile == "" {
		return nil, nil
	}
	pid, err := readPIDFile(e.pidFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		e.logger.Warn("ignoring an unreadable PID file", "path", e.pidFile, "error", err)
		return nil, e.clearStale(0)
	}
	info, err := inspect(pid)
	if errors.Is(err, errNoProcess) {
		e.logger.Info("PID file names a process that is gone", "pid", pid)
		return nil, e.clearStale(pid)
	}
	if err != nil {
		return nil, fmt.Errorf("failed to inspect pid %d from %s: %w: %w", pid, e.pidFile, ErrUnidentified, err)
	}
	ok, reason, err := e.identify(info)
	if err != nil {
		return nil, fmt.Errorf("failed to identify pid %d from %s: %w", pid, e.pidFile, err)
	}
	if !ok {
		e.logger.Warn("PID file names another process: not adopting it", "pid", pid, "reason", reason)
		return nil, e.clearStale(pid)
	}
	p := &process{
		pid:        pid,
		adopted:    true,
		started:    e.now(),
		startTicks: info.startTicks,
		exitCh:     make(chan Exit, 1),
		done:       make(chan struct{}),
	}
	e.mu.Lock()
	e.cur = p
	e.mu.Unlock()
	e.logger.Info("adopted a running agent from the PID file", "pid", pid, "exe", info.exe)
	go e.watchAdopted(p)
	return p, nil
}

// clearStale removes a PID file that names no process of ours.
func (e *Exec) clearStale(pid int) error {
	if pid == 0 {
		return removeAny(e.pidFile)
	}
	return removePIDFile(e.pidFile, pid)
}

// identify decides whether info is our agent: alive, leader of its own process group (every child we
// start is), and running Path or one of Path's rollback copies (.<base>.<version>.rollback in the same
// directory), with or without the kernel's " (deleted)" suffix. When /proc/<pid>/exe cannot be read it
// falls back to argv[0]. Pure apart from resolving Path's symlinks.
func (e *Exec) identify(info procInfo) (ok bool, reason string, err error) {
	if info.gone() {
		return false, "process is a zombie", nil
	}
	if info.pgrp != info.pid {
		return false, fmt.Sprintf("not a process group leader (pgrp %d)", info.pgrp), nil
	}
	candidates := []string{e.path}
	if real, err := filepath.EvalSymlinks(e.path); err == nil && real != e.path {
		candidates = append(candidates, real)
	}
	exe := info.exe
	if info.exeErr != nil {
		if info.argv0 == "" {
			return false, "", fmt.Errorf("%w: %w", ErrUnidentified, info.exeErr)
		}
		exe = info.argv0
	}
	exe = strings.TrimSuffix(exe, deletedSuffix)
	for _, c := range candidates {
		if exe == c || isRollbackOf(exe, c) {
			return true, "", nil
		}
	}
	return false, fmt.Sprintf("runs %q, not %s", exe, e.path), nil
}

// isRollbackOf reports whether exe is a rollback copy of live as install.Binary names them.
func isRollbackOf(exe, live string) bool {
	if filepath.Dir(exe) != filepath.Dir(live) {
		return false
	}
	name, prefix := filepath.Base(exe), "."+filepath.Base(live)+"."
	return len(name) > len(prefix)+len(".rollback") &&
		strings.HasPrefix(name, prefix) && strings.HasSuffix(name, ".rollback")
}

// watchAdopted polls an adopted process until it ends or the Exec is closed.
func (e *Exec) watchAdopted(p *process) {
	tick := time.NewTicker(e.poll)
	defer tick.Stop()
	for !e.checkAdopted(p) {
		select {
		case <-e.closeCh:
			return
		case <-p.done:
			return
		case <-tick.C:
		}
	}
}

// checkAdopted reports whether the adopted process p has ended, and records its exit if so. A pid that
// now belongs to a newer process (another start time) counts as ended.
func (e *Exec) checkAdopted(p *process) bool {
	if p.ended() {
		return true
	}
	info, err := inspect(p.pid)
	switch {
	case errors.Is(err, errNoProcess), err == nil && (info.gone() || info.startTicks != p.startTicks):
		e.exited(p, Exit{Pid: p.pid, Code: -1})
		return true
	default:
		return false
	}
}
