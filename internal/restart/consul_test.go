package restart

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/upgrader-dev/upgrader/internal/install"
	"github.com/upgrader-dev/upgrader/internal/testbin"
)

// consulAddr is this package's address block (127.0.15.x); the dev agent is a server, so .1.
const consulAddr = "127.0.15.1"

// agentAnswer is what waitConsul saw once the agent answered.
type agentAnswer struct {
	leader, version string
}

// waitConsul polls the dev agent until /v1/status/leader names a leader, then reads its version.
func waitConsul(ctx context.Context, t *testing.T) agentAnswer {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	get := func(path string) (string, bool) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+consulAddr+":8500"+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return "", false
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err == nil && resp.StatusCode == http.StatusOK
	}
	var ans agentAnswer
	waitFor(ctx, t, "the consul dev agent to answer with a leader", func() bool {
		body, ok := get("/v1/status/leader")
		if !ok || strings.Trim(strings.TrimSpace(body), `"`) == "" {
			return false
		}
		ans.leader = strings.Trim(strings.TrimSpace(body), `"`)
		self, ok := get("/v1/agent/self")
		if !ok {
			return false
		}
		var doc struct{ Config struct{ Version string } }
		if err := json.Unmarshal([]byte(self), &doc); err != nil {
			return false
		}
		ans.version = doc.Config.Version
		return true
	})
	return ans
}

// TestConsulDevAgentRestart supervises a real Consul 1.16.0 dev agent with Exec, swaps in 1.16.1 (when
// that binary is built too), lets a second Exec with the same PID file (the upgrader after a crash)
// adopt and restart it, and waits until it answers again with a leader and the new version.
func TestConsulDevAgentRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a real Consul agent")
	}
	from, err := testbin.Path("1.16.0")
	if err != nil {
		t.Skipf("consul 1.16.0 is not built: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	live := filepath.Join(dir, "bin", "consul")
	for _, d := range []string{filepath.Dir(live), filepath.Join(dir, "state")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(from, live); err != nil { // a hard link: nothing ever writes into the live file
		copyBinary(t, from, live, nil)
	}
	logPath := filepath.Join(dir, "consul.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	in := ExecInput{
		Path:    live,
		Args:    []string{"agent", "-dev", "-bind", consulAddr, "-client", consulAddr, "-node", "restart-dev"},
		PIDFile: filepath.Join(dir, "state", "consul.pid"),
		Stdout:  logf, Stderr: logf,
		Logger: testLogger(t),
	}
	newExec := func() *Exec {
		e, err := New(in)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := e.Kill(); err != nil {
				t.Errorf("cleanup: %v", err)
			}
			e.Close()
		})
		return e
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("consul log tail:\n%s", b)
		}
	})
	e := newExec()

	start := time.Now()
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	first := waitConsul(ctx, t)
	oldPid := e.Pid()
	t.Logf("consul %s (pid %d) answered with leader %s after %v", first.version, oldPid, first.leader, time.Since(start))
	if first.version != "1.16.0" {
		t.Fatalf("running version %q, want 1.16.0", first.version)
	}

	want := "1.16.0"
	if to, err := testbin.Path("1.16.1"); err == nil {
		bin := install.Binary{LivePath: live}
		staged, err := bin.Stage(to, "1.16.1")
		if err != nil {
			t.Fatal(err)
		}
		if err := install.Check(ctx, staged, "1.16.1", install.VersionCommand("version")); err != nil {
			t.Fatal(err)
		}
		if _, err := bin.Swap(staged, "1.16.0"); err != nil {
			t.Fatal(err)
		}
		want = "1.16.1"
	} else {
		t.Logf("consul 1.16.1 not built (%v): restarting the same version", err)
	}

	// The upgrader "crashes" here: a new supervisor with the same PID file adopts the running 1.16.0
	// agent (its /proc/<pid>/exe now reads "... (deleted)"), stops it and starts the swapped binary.
	exit1 := e.ExitCh()
	e = newExec()
	start = time.Now()
	if err := e.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	// Consul exits with status 1 after a graceful shutdown on SIGTERM.
	if ex := receive(ctx, t, exit1); ex.Pid != oldPid || ex.Signal != 0 {
		t.Errorf("the old agent's exit as its first supervisor saw it: %+v, want an exit on its own", ex)
	}
	restarted := time.Since(start)
	second := waitConsul(ctx, t)
	t.Logf("Restart returned after %v; consul %s (pid %d) answered with leader %s after %v",
		restarted, second.version, e.Pid(), second.leader, time.Since(start))
	if e.Pid() == oldPid || alive(oldPid) {
		t.Errorf("old agent %d still alive (%v) or not replaced (pid %d)", oldPid, alive(oldPid), e.Pid())
	}
	if second.version != want {
		t.Errorf("after Restart the agent runs %q, want %q", second.version, want)
	}

	start = time.Now()
	if err := e.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("graceful stop took %v", time.Since(start))
}
