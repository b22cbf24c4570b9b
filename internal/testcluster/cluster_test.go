package testcluster

import (
	"context"
	"errors"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/upgrader-dev/upgrader/internal/testbin"
)

const (
	oldVersion = "1.16.0"
	newVersion = "1.16.1"
)

// TestFoundation is the test bed's own proof: 3 servers + 2 clients on 1.16.0 agree on one leader; one
// follower restarted onto 1.16.1 brings the cluster back to healthy (autopilot healthy, failure tolerance
// 1, every server agreeing on the leader) and reports 1.16.1 itself. Timings are logged, not asserted.
func TestFoundation(t *testing.T) {
	if testing.Short() {
		t.Skip("real Consul cluster: skipped in -short")
	}
	oldBin := testbin.Require(t, oldVersion)
	newBin := testbin.Require(t, newVersion)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	c := New(t, Options{Block: 10, Servers: 3, Clients: 2, Binary: oldBin})
	start := time.Now()
	if err := c.Start(ctx); err != nil {
		t.Fatalf("failed to start the cluster: %v", err)
	}
	t.Logf("timing: 3 servers + 2 clients healthy after %s", time.Since(start).Round(time.Millisecond))

	leader, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range c.Servers() {
		l, err := s.Leader(ctx)
		if err != nil || l != leader.RPCAddr {
			t.Fatalf("%s reports leader %q (%v), want %s", s.Name, l, err, leader.RPCAddr)
		}
	}
	for _, n := range c.Nodes() {
		if v, err := n.Version(ctx); err != nil || v != oldVersion {
			t.Fatalf("%s runs %q (%v), want %s", n.Name, v, err, oldVersion)
		}
	}
	h, err := c.AutopilotHealth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Healthy || h.FailureTolerance != 1 {
		t.Fatalf("before the restart: autopilot healthy=%t tolerance=%d, want true/1", h.Healthy, h.FailureTolerance)
	}
	t.Logf("leader %s (%s); autopilot healthy, failure tolerance %d", leader.Name, leader.RPCAddr, h.FailureTolerance)

	followers, err := c.Followers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := followers[0]
	f.SetBinary(newBin)
	t0 := time.Now()
	if err := f.Restart(ctx); err != nil {
		t.Fatalf("failed to restart %s onto %s: %v", f.Name, newVersion, err)
	}
	answered := time.Since(t0)
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatalf("cluster not healthy after restarting %s: %v", f.Name, err)
	}
	healthy := time.Since(t0)
	t.Logf("timing: %s restarted onto %s: answering after %s, cluster healthy after %s",
		f.Name, newVersion, answered.Round(time.Millisecond), healthy.Round(time.Millisecond))

	h, err = c.AutopilotHealth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Healthy || h.FailureTolerance != 1 {
		t.Fatalf("after the restart: autopilot healthy=%t tolerance=%d, want true/1", h.Healthy, h.FailureTolerance)
	}
	newLeader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := f.Version(ctx); err != nil || v != newVersion {
		t.Fatalf("%s reports %q (%v), want %s", f.Name, v, err, newVersion)
	}
	for _, n := range c.Nodes() {
		if n == f {
			continue
		}
		if v, err := n.Version(ctx); err != nil || v != oldVersion {
			t.Fatalf("%s runs %q (%v), want still %s", n.Name, v, err, oldVersion)
		}
	}
	// Autopilot's view of the server's version refreshes on its own schedule: wait for it, log when.
	err = poll(ctx, "autopilot to see "+f.Name+" at "+newVersion, func(ctx context.Context) error {
		h, err := c.AutopilotHealth(ctx)
		if err != nil {
			return err
		}
		for _, s := range h.Servers {
			if s.Name == f.Name && s.Version == newVersion {
				return nil
			}
		}
		return errors.New("not yet")
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("timing: autopilot reports %s at %s after %s; leader before %s, after %s",
		f.Name, newVersion, time.Since(t0).Round(time.Millisecond), leader.RPCAddr, newLeader)

	// Teardown kills every process group; prove nothing survives Close.
	var pids []int
	for _, n := range c.Nodes() {
		pids = append(pids, n.Pid())
	}
	tc := time.Now()
	c.Close()
	for i, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("%s (pid %d) survived teardown: %v", c.Nodes()[i].Name, pid, err)
		}
	}
	t.Logf("timing: teardown of %d agents took %s", len(pids), time.Since(tc).Round(time.Millisecond))
}

// TestSupervised runs the agents the way the upgrader's exec mode will (Binary() + AgentArgs(), started
// by someone else) and checks that the harness's waits see the cluster.
func TestSupervised(t *testing.T) {
	if testing.Short() {
		t.Skip("real Consul cluster: skipped in -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := New(t, Options{Block: 10, Servers: 3, Clients: 1, Version: oldVersion, Supervised: true})
	if err := c.CheckPorts(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, n := range c.Nodes() {
		cmd := exec.Command(n.Binary(), n.AgentArgs()...)
		cmd.SysProcAttr = sysProcAttr()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
		})
	}
	leader, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("timing: supervised cluster healthy after %s, leader %s", time.Since(start).Round(time.Millisecond), leader.Name)
	if c.Node("s1").Running() {
		t.Error("a supervised node must not report a harness process")
	}
}
