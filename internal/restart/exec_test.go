package restart

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/upgrader-dev/upgrader/internal/install"
)

func TestNew(t *testing.T) {
	tests := []struct {
		name     string
		in       ExecInput
		wantErr  error
		wantPath func(string) bool
	}{
		{name: "missing path", in: ExecInput{}, wantErr: ErrMissingCommand},
		{name: "bare name not in PATH", in: ExecInput{Path: "no-such-agent-binary"}, wantErr: exec.ErrNotFound},
		{name: "bare name from PATH", in: ExecInput{Path: "sleep"}, wantPath: filepath.IsAbs},
		{name: "relative path made absolute", in: ExecInput{Path: "./agent"}, wantPath: filepath.IsAbs},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := New(tc.in)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("New err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			if !tc.wantPath(e.path) {
				t.Errorf("path = %q", e.path)
			}
			if e.killSignal != syscall.SIGTERM || e.killTimeout != DefaultKillTimeout || e.policy != nil {
				t.Errorf("defaults: signal %v timeout %v policy %v", e.killSignal, e.killTimeout, e.policy)
			}
			if e.Pid() != 0 || e.ExitCh() != nil {
				t.Errorf("a new Exec reports a process")
			}
		})
	}
}

func TestStartStop(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last, after the Exec cleanups
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f := newFixture(t)
	e := f.newExec(f.input("run"))
	if err := e.Stop(ctx); err != nil {
		t.Fatalf("Stop with nothing running: %v", err)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pid := e.Pid()
	f.waitReady(ctx, pid)
	if got := readPID(t, f.pidFile); got != pid {
		t.Errorf("PID file says %d, want %d", got, pid)
	}
	info, err := inspect(pid)
	if err != nil {
		t.Fatal(err)
	}
	if info.pgrp != pid || info.exe != f.agent {
		t.Errorf("child pgrp %d exe %q, want its own group and %s", info.pgrp, info.exe, f.agent)
	}
	if err := e.Start(ctx); !errors.Is(err, ErrRunning) {
		t.Errorf("second Start err = %v, want ErrRunning", err)
	}
	exitCh := e.ExitCh()
	start := time.Now()
	if err := e.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("graceful stop took %v", time.Since(start))
	ex := receive(ctx, t, exitCh)
	if ex.Pid != pid || ex.Code != 0 || ex.Signal != 0 || !ex.Requested || ex.Adopted {
		t.Errorf("exit = %+v, want pid %d code 0 requested", ex, pid)
	}
	select {
	case ex := <-exitCh:
		t.Errorf("a second value on the exit channel: %+v", ex)
	default:
	}
	if e.Pid() != 0 || e.ExitCh() != nil || alive(pid) {
		t.Errorf("after Stop: Pid %d ExitCh %v alive %v", e.Pid(), e.ExitCh(), alive(pid))
	}
	if _, err := os.Stat(f.pidFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("PID file left after Stop: %v", err)
	}
	e.Close()
	if err := e.Start(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close err = %v, want ErrClosed", err)
	}
}

// TestStopEscalates stops a child that ignores SIGTERM: SIGKILL follows when KillTimeout passes or when
// ctx ends, whichever is first.
func TestStopEscalates(t *testing.T) {
	tests := []struct {
		name        string
		killTimeout time.Duration
		ctxTimeout  time.Duration
	}{
		{name: "kill timeout", killTimeout: 300 * time.Millisecond, ctxTimeout: time.Minute},
		{name: "context deadline", killTimeout: time.Minute, ctxTimeout: 300 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			f := newFixture(t)
			in := f.input("ignore-term")
			in.KillTimeout = tc.killTimeout
			e := f.newExec(in)
			if err := e.Start(ctx); err != nil {
				t.Fatal(err)
			}
			pid := e.Pid()
			f.waitReady(ctx, pid)
			exitCh := e.ExitCh()
			stopCtx, stopCancel := context.WithTimeout(ctx, tc.ctxTimeout)
			defer stopCancel()
			start := time.Now()
			if err := e.Stop(stopCtx); err != nil {
				t.Fatal(err)
			}
			t.Logf("stop with escalation took %v (kill timeout %v, ctx %v)", time.Since(start), tc.killTimeout, tc.ctxTimeout)
			ex := receive(ctx, t, exitCh)
			if ex.Signal != syscall.SIGKILL || ex.Code != -1 || !ex.Requested {
				t.Errorf("exit = %+v, want SIGKILL, requested", ex)
			}
			if alive(pid) {
				t.Errorf("pid %d still alive", pid)
			}
		})
	}
}

func TestKill(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f := newFixture(t)
	e := f.newExec(f.input("run"))
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pid := e.Pid()
	f.waitReady(ctx, pid)
	exitCh := e.ExitCh()
	if err := e.Kill(); err != nil {
		t.Fatal(err)
	}
	if ex := receive(ctx, t, exitCh); ex.Signal != syscall.SIGKILL || !ex.Requested {
		t.Errorf("exit = %+v, want SIGKILL, requested", ex)
	}
	if alive(pid) {
		t.Errorf("pid %d still alive", pid)
	}
}

// TestProcessGroupCleanup: a grandchild that ignores SIGTERM (in the agent's process group) is gone
// once Stop or Kill returns, although the agent itself exits on SIGTERM.
func TestProcessGroupCleanup(t *testing.T) {
	tests := []struct {
		name string
		stop func(ctx context.Context, e *Exec) error
	}{
		{name: "stop", stop: func(ctx context.Context, e *Exec) error { return e.Stop(ctx) }},
		{name: "kill", stop: func(_ context.Context, e *Exec) error { return e.Kill() }},
		{name: "restart", stop: func(ctx context.Context, e *Exec) error { return e.Restart(ctx) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			f := newFixture(t)
			in := f.input("spawn")
			in.KillTimeout = 500 * time.Millisecond
			e := f.newExec(in)
			if err := e.Start(ctx); err != nil {
				t.Fatal(err)
			}
			pid := e.Pid()
			f.waitReady(ctx, pid)
			b, err := os.ReadFile(filepath.Join(f.dir, "grandchild"))
			if err != nil {
				t.Fatal(err)
			}
			gc, _ := strconv.Atoi(string(b))
			f.waitReady(ctx, gc)
			if members, _ := groupMembers(pid); len(members) != 2 {
				t.Errorf("group %d has members %v, want the agent and the grandchild", pid, members)
			}
			start := time.Now()
			if err := tc.stop(ctx, e); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s took %v", tc.name, time.Since(start))
			if alive(pid) || alive(gc) {
				t.Errorf("alive after %s: agent %v grandchild %v", tc.name, alive(pid), alive(gc))
			}
			if members, _ := groupMembers(pid); len(members) != 0 {
				t.Errorf("group %d still has %v", pid, members)
			}
		})
	}
}

// TestUnexpectedExit: a crash is reported on ExitCh and, without AutoRestart, nothing is restarted.
func TestUnexpectedExit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f := newFixture(t)
	e := f.newExec(f.input("crash-once"))
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pid := e.Pid()
	ex := receive(ctx, t, e.ExitCh())
	if ex.Pid != pid || ex.Code != 3 || ex.Requested {
		t.Errorf("exit = %+v, want code 3, not requested", ex)
	}
	if e.Pid() != 0 {
		t.Errorf("Pid = %d after the crash", e.Pid())
	}
	if last, ok := e.LastExit(); !ok || last != ex {
		t.Errorf("LastExit = %+v, %v; want %+v", last, ok, ex)
	}
	if _, err := os.Stat(f.pidFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("PID file left after the crash: %v", err)
	}
	// The caller decides: start it again.
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	f.waitReady(ctx, e.Pid())
	if err := e.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestAutoRestart(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last, after the Exec cleanups
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f := newFixture(t)
	in := f.input("crash-once")
	in.AutoRestart = &Backoff{Initial: 50 * time.Millisecond}
	e := f.newExec(in)
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	first := e.Pid()
	ex := receive(ctx, t, e.ExitCh())
	crashed := time.Now()
	if ex.Code != 3 || ex.Requested {
		t.Errorf("exit = %+v", ex)
	}
	var second int
	waitFor(ctx, t, "the auto-restart", func() bool {
		second = e.Pid()
		return second != 0 && second != first
	})
	f.waitReady(ctx, second)
	t.Logf("restarted %v after the crash", time.Since(crashed))
	if got := readPID(t, f.pidFile); got != second {
		t.Errorf("PID file says %d, want %d", got, second)
	}
	exitCh := e.ExitCh()
	if err := e.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if ex := receive(ctx, t, exitCh); !ex.Requested {
		t.Errorf("exit after Stop = %+v, want requested", ex)
	}
	if e.Pid() != 0 {
		t.Errorf("restarted after Stop: pid %d", e.Pid())
	}
}

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Initial: 100 * time.Millisecond, Max: time.Second}
	for i, want := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		if got := b.Delay(i); got != want*time.Millisecond && !(want == 1000 && got == time.Second) {
			t.Errorf("Delay(%d) = %v, want %vms", i, got, want)
		}
	}
	if got := (Backoff{}).Delay(100); got != 30*time.Second {
		t.Errorf("default Delay(100) = %v, want 30s", got)
	}
}

// TestRestartRunsNewBinary swaps a new binary in with the install package while the agent runs, and
// shows that Restart runs the new bytes.
func TestRestartRunsNewBinary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f := newFixture(t)
	e := f.newExec(f.input("run"))
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	oldPid := e.Pid()
	oldSum := f.waitReady(ctx, oldPid)

	release := filepath.Join(t.TempDir(), "release")
	copyBinary(t, f.agent, release, []byte("\nversion 2\n"))
	newSum, err := install.Sha256(release)
	if err != nil {
		t.Fatal(err)
	}
	bin := install.Binary{LivePath: f.agent}
	staged, err := bin.Stage(release, "2.0.0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bin.Swap(staged, "1.0.0"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := e.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("restart took %v", time.Since(start))
	newPid := e.Pid()
	got := f.waitReady(ctx, newPid)
	if newPid == oldPid || alive(oldPid) {
		t.Errorf("old pid %d alive %v, new pid %d", oldPid, alive(oldPid), newPid)
	}
	if got != newSum || got == oldSum {
		t.Errorf("restarted process runs %s, want the new binary %s (old %s)", got, newSum, oldSum)
	}
	if readPID(t, f.pidFile) != newPid {
		t.Errorf("PID file not updated")
	}
	if err := e.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestStopCancelsPendingAutoRestart: Stop during the backoff after a crash cancels the restart, and the
// goroutine waiting out the backoff ends (goleak checks at the end of the package).
func TestStopCancelsPendingAutoRestart(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last, after the Exec cleanups
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f := newFixture(t)
	in := f.input("crash-once")
	in.AutoRestart = &Backoff{Initial: time.Hour}
	e := f.newExec(in)
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	receive(ctx, t, e.ExitCh())
	if err := e.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if e.Pid() != 0 || readyCount(t, f) != 1 {
		t.Errorf("restarted although stopped: pid %d, %d starts", e.Pid(), readyCount(t, f))
	}
}

// TestCloseLeavesAgentRunning: Close ends supervision but not the agent, which the next Exec adopts.
func TestCloseLeavesAgentRunning(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f := newFixture(t)
	e1 := f.newExec(f.input("run"))
	if err := e1.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pid := e1.Pid()
	f.waitReady(ctx, pid)
	e1.Close()
	if !alive(pid) {
		t.Fatal("Close stopped the agent")
	}
	if err := e1.Stop(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Stop after Close err = %v, want ErrClosed", err)
	}
	e2 := f.newExec(f.input("run"))
	if err := e2.Stop(ctx); err != nil { // Stop adopts from the PID file first
		t.Fatal(err)
	}
	if alive(pid) {
		t.Errorf("pid %d alive after the second Exec's Stop", pid)
	}
}
