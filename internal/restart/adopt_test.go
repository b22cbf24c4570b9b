package restart

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/upgrader-dev/upgrader/internal/install"
)

// readyCount is how many helper processes have started in f (one ready file each).
func readyCount(t *testing.T, f *fixture) int {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(f.dir, "ready.*"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range m {
		if !strings.HasSuffix(p, ".tmp") {
			n++
		}
	}
	return n
}

// parentOf returns the parent pid from /proc/<pid>/stat (field 4).
func parentOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

// TestAdoptAfterSupervisorDropped simulates an upgrader crash inside the test process: the first Exec is
// dropped without stopping its child, and a second Exec with the same PID file must adopt the running
// child instead of starting a second copy, also when the binary was swapped meanwhile (so that
// /proc/<pid>/exe reads "<path> (deleted)").
func TestAdoptAfterSupervisorDropped(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // the dropped Exec's reaper must end too
	for _, swap := range []bool{false, true} {
		t.Run(fmt.Sprintf("swapped=%v", swap), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			f := newFixture(t)
			e1 := f.newExec(f.input("run"))
			if err := e1.Start(ctx); err != nil {
				t.Fatal(err)
			}
			pid := e1.Pid()
			oldSum := f.waitReady(ctx, pid)
			exit1 := e1.ExitCh()

			newSum := oldSum
			if swap {
				release := filepath.Join(t.TempDir(), "release")
				copyBinary(t, f.agent, release, []byte("\nversion 2\n"))
				bin := install.Binary{LivePath: f.agent}
				staged, err := bin.Stage(release, "2.0.0")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := bin.Swap(staged, "1.0.0"); err != nil {
					t.Fatal(err)
				}
				if newSum, err = install.Sha256(f.agent); err != nil {
					t.Fatal(err)
				}
			}
			exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
			t.Logf("running agent: pid %d exe %q", pid, exe)

			// The "crashed" supervisor is simply not used any more.
			e2 := f.newExec(f.input("run"))
			if err := e2.Start(ctx); err != nil {
				t.Fatal(err)
			}
			if !e2.Adopted() || e2.Pid() != pid {
				t.Fatalf("second Exec: adopted %v pid %d, want to adopt %d", e2.Adopted(), e2.Pid(), pid)
			}
			if n := readyCount(t, f); n != 1 {
				t.Fatalf("%d agent processes started, want 1 (no second copy)", n)
			}
			exit2 := e2.ExitCh()
			start := time.Now()
			if err := e2.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			t.Logf("stop of the adopted agent took %v", time.Since(start))
			if ex := receive(ctx, t, exit2); !ex.Adopted || !ex.Requested || ex.Pid != pid || ex.Code != -1 {
				t.Errorf("adopted exit = %+v", ex)
			}
			// The dropped supervisor still reaps its child (in a real crash it is gone) and sees an exit
			// it did not ask for.
			if ex := receive(ctx, t, exit1); ex.Requested || ex.Code != 0 {
				t.Errorf("first supervisor's exit = %+v", ex)
			}
			if alive(pid) {
				t.Fatalf("pid %d alive after Stop", pid)
			}

			if err := e2.Start(ctx); err != nil {
				t.Fatal(err)
			}
			if e2.Adopted() || e2.Pid() == pid {
				t.Fatalf("Start after Stop adopted %v pid %d", e2.Adopted(), e2.Pid())
			}
			if got := f.waitReady(ctx, e2.Pid()); got != newSum {
				t.Errorf("new process runs %s, want %s", got, newSum)
			}
			if err := e2.Stop(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestAdoptAfterSupervisorKilled runs the supervisor in a separate process and SIGKILLs it: the agent
// keeps running (its output goes to a file, not a pipe), and a new Exec adopts it on Restart, stops it
// and starts a fresh copy, without ever running two.
func TestAdoptAfterSupervisorKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f := newFixture(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "agent.log")
	sup := exec.Command(self, "supervise", f.agent, f.pidFile, logPath)
	sup.Env = f.env
	sup.Stderr = os.Stderr
	if err := sup.Start(); err != nil {
		t.Fatal(err)
	}
	supDone := false
	t.Cleanup(func() {
		if !supDone {
			sup.Process.Kill()
			sup.Wait()
		}
	})
	f.waitReady(ctx, sup.Process.Pid)
	agentPid := readPID(t, f.pidFile)
	f.waitReady(ctx, agentPid)
	if parentOf(agentPid) != sup.Process.Pid {
		t.Fatalf("agent %d is not the supervisor's child", agentPid)
	}

	if err := sup.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = sup.Wait()
	supDone = true
	t.Logf("supervisor: %v; agent %d alive %v, now a child of %d", err, agentPid, alive(agentPid), parentOf(agentPid))
	if !alive(agentPid) {
		t.Fatal("SIGKILL of the supervisor took the agent down")
	}

	e := f.newExec(f.input("run"))
	start := time.Now()
	if err := e.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("restart through adoption took %v", time.Since(start))
	newPid := e.Pid()
	if newPid == agentPid || e.Adopted() {
		t.Fatalf("Restart did not start a fresh agent: pid %d adopted %v", newPid, e.Adopted())
	}
	f.waitReady(ctx, newPid)
	if alive(agentPid) {
		t.Errorf("old agent %d still alive after Restart", agentPid)
	}
	if st, err := inspect(agentPid); err == nil {
		t.Logf("old agent state after Restart: %q (a zombie until its new parent reaps it)", st.state)
	}
	if n := readyCount(t, f); n != 3 { // supervisor, old agent, new agent
		t.Errorf("%d helper processes started, want 3", n)
	}
	if readPID(t, f.pidFile) != newPid {
		t.Errorf("PID file does not name the new agent")
	}
	if err := e.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestStalePIDFile: only a live process that leads its own group and runs Path (or its rollback copy) is
// adopted; anything else in the PID file is stale, left alone, and replaced by a fresh start.
func TestStalePIDFile(t *testing.T) {
	startOther := func(t *testing.T, f *fixture, path string, ownGroup bool, args ...string) int {
		cmd := exec.Command(path, args...)
		cmd.Env = f.env
		if ownGroup {
			setProcessGroup(cmd)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
		return cmd.Process.Pid
	}
	tests := []struct {
		name      string
		prepare   func(t *testing.T, f *fixture) (content string, pid int)
		wantAdopt bool
	}{
		{name: "garbage", prepare: func(t *testing.T, f *fixture) (string, int) { return "hello\n", 0 }},
		{name: "dead pid", prepare: func(t *testing.T, f *fixture) (string, int) {
			cmd := exec.Command("/bin/true")
			if err := cmd.Run(); err != nil {
				t.Fatal(err)
			}
			return strconv.Itoa(cmd.Process.Pid), 0
		}},
		{name: "another program", prepare: func(t *testing.T, f *fixture) (string, int) {
			pid := startOther(t, f, "/bin/sleep", true, "60")
			return strconv.Itoa(pid), pid
		}},
		{name: "agent binary but not a group leader", prepare: func(t *testing.T, f *fixture) (string, int) {
			pid := startOther(t, f, f.agent, false, "run")
			return strconv.Itoa(pid), pid
		}},
		{name: "agent binary leading its group", wantAdopt: true, prepare: func(t *testing.T, f *fixture) (string, int) {
			pid := startOther(t, f, f.agent, true, "run")
			return strconv.Itoa(pid), pid
		}},
		{name: "rollback copy of the agent", wantAdopt: true, prepare: func(t *testing.T, f *fixture) (string, int) {
			rb := install.Binary{LivePath: f.agent}.RollbackPath("1.0.0")
			copyBinary(t, f.agent, rb, nil)
			pid := startOther(t, f, rb, true, "run")
			return strconv.Itoa(pid), pid
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			f := newFixture(t)
			content, other := tc.prepare(t, f)
			if other != 0 && strings.Contains(tc.name, "agent") {
				f.waitReady(ctx, other)
			}
			if err := os.WriteFile(f.pidFile, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			e := f.newExec(f.input("run"))
			if err := e.Start(ctx); err != nil {
				t.Fatal(err)
			}
			if e.Adopted() != tc.wantAdopt {
				t.Fatalf("adopted = %v, want %v", e.Adopted(), tc.wantAdopt)
			}
			if tc.wantAdopt {
				if e.Pid() != other {
					t.Fatalf("adopted pid %d, want %d", e.Pid(), other)
				}
			} else {
				if e.Pid() == other || e.Pid() == 0 {
					t.Fatalf("pid %d: want a fresh start", e.Pid())
				}
				f.waitReady(ctx, e.Pid())
				if readPID(t, f.pidFile) != e.Pid() {
					t.Errorf("PID file not replaced")
				}
				if other != 0 && !alive(other) {
					t.Errorf("the unrelated process %d was touched", other)
				}
			}
			if err := e.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			if tc.wantAdopt && alive(other) {
				t.Errorf("adopted process %d survived Stop", other)
			}
		})
	}
}
