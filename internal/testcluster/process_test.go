package testcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// These tests exercise the process plumbing with tiny shell "agents"; they need no Consul and run in
// -short. They use block 10 like the rest of the package (tests here are never parallel).

func writeScript(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fake-agent")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPortGuard(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.10.2:8500")
	if err != nil {
		t.Skipf("cannot bind 127.0.10.2:8500 for the test: %v", err)
	}
	defer l.Close()
	c, err := Create(t, Options{Block: 10, Servers: 1, Clients: 1, Binary: "/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Start(context.Background())
	if !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), "127.0.10.2:8500") {
		t.Fatalf("Start() = %v, want ErrPortInUse naming 127.0.10.2:8500", err)
	}
	if c.Node("s1").Running() || c.Node("c1").Running() {
		t.Fatal("no agent should have been started")
	}
	t.Logf("guard message: %v", err)
}

func TestStartFailsWhenAgentExits(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	bin := writeScript(t, `echo "fake agent: bad config $*" >&2; exit 3`)
	c, err := Create(t, Options{Block: 10, Servers: 1, Binary: bin})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err = c.Node("s1").Start(ctx)
	if !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "fake agent: bad config agent -config-dir") ||
		!strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("Start() = %v, want ErrExited with the exit status and the log tail", err)
	}
	t.Logf("exit detected after %s", time.Since(start).Round(time.Millisecond))
}

func TestStopEscalatesAndKillsTheGroup(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	// The fake agent ignores SIGTERM and has a child in its process group.
	bin := writeScript(t, `trap '' TERM; sleep 300 & echo fake-agent-ready; while :; do sleep 1; done`)
	c, err := Create(t, Options{Block: 10, Servers: 1, Binary: bin, StopTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	n := c.Node("s1")
	if err := n.spawn(); err != nil {
		t.Fatal(err)
	}
	pid := n.Pid()
	// Signal only once the trap is installed.
	err = poll(context.Background(), "the fake agent to trap SIGTERM", func(context.Context) error {
		if tail, _ := n.LogTail(5); !strings.Contains(tail, "fake-agent-ready") {
			return errors.New("not ready")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.spawn(); !errors.Is(err, ErrRunning) {
		t.Fatalf("second spawn = %v, want ErrRunning", err)
	}
	start := time.Now()
	if err := n.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("stop (SIGTERM ignored, SIGKILL after %s) took %s", c.opts.StopTimeout, time.Since(start).Round(time.Millisecond))
	if n.Running() || n.Pid() != 0 {
		t.Fatal("agent still running after Stop")
	}
	// The orphaned `sleep` is reaped by init, not by us: wait (bounded) for the group to vanish.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = poll(ctx, "the process group to vanish", func(context.Context) error {
		if err := syscall.Kill(-pid, 0); !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("process group %d still exists: %v", pid, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-n.Exited():
	default:
		t.Fatal("Exited() not closed")
	}
	if err := n.Stop(context.Background()); err != nil {
		t.Fatalf("second Stop = %v, want nil", err)
	}
	tail, err := n.LogTail(5)
	if err != nil || !strings.Contains(tail, "exited: signal: killed") {
		t.Fatalf("log tail = %q, %v", tail, err)
	}
}

func TestSupervisedRefusesToStart(t *testing.T) {
	c, err := Create(t, Options{Block: 10, Servers: 1, Binary: "/bin/true", Supervised: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background()); !errors.Is(err, ErrSupervised) {
		t.Fatalf("Cluster.Start = %v, want ErrSupervised", err)
	}
	if err := c.Node("s1").Start(context.Background()); !errors.Is(err, ErrSupervised) {
		t.Fatalf("Node.Start = %v, want ErrSupervised", err)
	}
}

func TestSupervisedHarnessedNodeStarts(t *testing.T) {
	bin := writeScript(t, `echo started; exec sleep 300`)
	c, err := Create(t, Options{Block: 10, Servers: 1, Clients: 1, Binary: bin, Supervised: true, Harnessed: []string{"c1"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Node("s1").spawn(); !errors.Is(err, ErrSupervised) {
		t.Fatalf("s1 spawn = %v, want ErrSupervised", err)
	}
	if err := c.Node("c1").spawn(); err != nil {
		t.Fatalf("harnessed c1 spawn = %v", err)
	}
	if !c.Node("c1").Running() {
		t.Fatal("c1 should run")
	}
	if err := c.Node("c1").Kill(); err != nil {
		t.Fatal(err)
	}
}
