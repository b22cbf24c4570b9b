package restart

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"

	"github.com/upgrader-dev/upgrader/internal/install"
)

// The test binary doubles as the supervised "agent": with helperEnv set it runs helperMain instead of
// the tests. It is copied into each test's directory, so /proc/<pid>/exe names a path the test owns.
const (
	helperEnv    = "UPGRADER_RESTART_HELPER"
	helperDirEnv = "UPGRADER_RESTART_DIR"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain(os.Args[1:]))
	}
	goleak.VerifyTestMain(m)
}

// helperMain is the agent stand-in. Modes:
//
//	run          exit 0 on SIGTERM
//	ignore-term  ignore SIGTERM (only SIGKILL ends it)
//	spawn        start a grandchild in ignore-term mode (same process group), exit 0 on SIGTERM
//	crash-once   exit 3 the first time (marker file in the helper dir), then behave like run
//	supervise    <agent> <pidfile> <log>: run an Exec of <agent> in run mode and block (to be SIGKILLed)
//
// Every mode writes ready.<pid> (holding the SHA-256 of its own executable) once its signal handling is
// in place.
func helperMain(args []string) int {
	dir := os.Getenv(helperDirEnv)
	ready := func() {
		sum, err := install.Sha256("/proc/self/exe")
		if err != nil {
			sum = "error: " + err.Error()
		}
		p := filepath.Join(dir, fmt.Sprintf("ready.%d", os.Getpid()))
		if err := os.WriteFile(p+".tmp", []byte(sum), 0o644); err == nil {
			os.Rename(p+".tmp", p)
		}
	}
	term := make(chan os.Signal, 1)
	mode := ""
	if len(args) > 0 {
		mode = args[0]
	}
	switch mode {
	case "run":
		signal.Notify(term, syscall.SIGTERM)
		ready()
		<-term
		return 0
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		ready()
		time.Sleep(time.Hour)
		return 0
	case "spawn":
		signal.Notify(term, syscall.SIGTERM)
		self, _ := os.Executable()
		gc := exec.Command(self, "ignore-term")
		if err := gc.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		os.WriteFile(filepath.Join(dir, "grandchild"), []byte(strconv.Itoa(gc.Process.Pid)), 0o644)
		ready()
		<-term
		return 0
	case "crash-once":
		marker := filepath.Join(dir, "crashed")
		if _, err := os.Stat(marker); err != nil {
			os.WriteFile(marker, nil, 0o644)
			ready()
			return 3
		}
		signal.Notify(term, syscall.SIGTERM)
		ready()
		<-term
		return 0
	case "supervise":
		logf, err := os.OpenFile(args[3], os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		e, err := New(ExecInput{Path: args[1], Args: []string{"run"}, Env: os.Environ(), PIDFile: args[2],
			Stdout: logf, Stderr: logf})
		if err == nil {
			err = e.Start(context.Background())
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		ready()
		time.Sleep(time.Hour)
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
	return 2
}

// fixture is one test's agent binary, state directory and helper directory.
type fixture struct {
	t       *testing.T
	dir     string // helper files (ready.<pid>, grandchild, crashed)
	agent   string // the live agent path
	pidFile string
	env     []string
	logger  hclog.Logger
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	root := t.TempDir()
	f := &fixture{t: t, dir: filepath.Join(root, "helper"), agent: filepath.Join(root, "bin", "agent"),
		pidFile: filepath.Join(root, "state", "agent.pid")}
	for _, d := range []string{f.dir, filepath.Dir(f.agent), filepath.Dir(f.pidFile)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	copyBinary(t, self, f.agent, nil)
	f.env = append(os.Environ(), helperEnv+"=1", helperDirEnv+"="+f.dir)
	f.logger = testLogger(t)
	return f
}

func (f *fixture) input(mode string) ExecInput {
	return ExecInput{Path: f.agent, Args: []string{mode}, Env: f.env, PIDFile: f.pidFile,
		KillTimeout: 5 * time.Second, Logger: f.logger}
}

// newExec creates an Exec and makes sure whatever it runs is gone when the test ends.
func (f *fixture) newExec(in ExecInput) *Exec {
	f.t.Helper()
	e, err := New(in)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() {
		if err := e.Kill(); err != nil && err != ErrClosed {
			f.t.Errorf("cleanup kill: %v", err)
		}
		e.Close()
	})
	return e
}

// waitReady waits until pid wrote its ready file and returns the SHA-256 of the binary it runs.
func (f *fixture) waitReady(ctx context.Context, pid int) string {
	f.t.Helper()
	p := filepath.Join(f.dir, fmt.Sprintf("ready.%d", pid))
	var sum []byte
	waitFor(ctx, f.t, fmt.Sprintf("pid %d to be ready", pid), func() bool {
		var err error
		sum, err = os.ReadFile(p)
		return err == nil
	})
	return string(sum)
}

// copyBinary copies src to dst (mode 0755) and appends extra, which makes a binary that runs the same
// but has other bytes.
func copyBinary(t *testing.T, src, dst string, extra []byte) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if _, err := out.Write(extra); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// receive waits for one Exit on ch, bounded by ctx.
func receive(ctx context.Context, t *testing.T, ch <-chan Exit) Exit {
	t.Helper()
	if ch == nil {
		t.Fatal("nil exit channel")
	}
	select {
	case ex := <-ch:
		return ex
	case <-ctx.Done():
		t.Fatal("timed out waiting for an exit")
		return Exit{}
	}
}

// alive reports whether pid is a running (not zombie) process.
func alive(pid int) bool {
	info, err := inspect(pid)
	return err == nil && !info.gone()
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	pid, err := readPIDFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// testLogger sends hclog output to t.Log until the test ends (goroutines may log a little later).
func testLogger(t *testing.T) hclog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.stop)
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Output: w, Level: hclog.Debug})
}

type testWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done = true
}
