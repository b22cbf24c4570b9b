package lock_test

import (
	"context"
	"errors"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/upgrader-dev/upgrader/internal/consulconn"
	"github.com/upgrader-dev/upgrader/internal/lock"
	"github.com/upgrader-dev/upgrader/internal/testcluster"
)

// controlSession creates, through node, the kind of session F7 is about: tied to that agent's own node
// (no checks at all). It is the control group: the restart must destroy it while our lock survives.
func controlSession(t *testing.T, node *testcluster.Node) string {
	t.Helper()
	id, _, err := node.API().Session().CreateNoChecks(&api.SessionEntry{Name: "control: session on " + node.Name, Behavior: api.SessionBehaviorRelease}, nil)
	if err != nil {
		t.Fatalf("control session through %s: %v", node.Name, err)
	}
	return id
}

// TestF7_LockSurvivesClientAgentRestart: the lock is taken through a client agent that is then stopped with
// SIGTERM (a client leaves on terminate: its node and sessions are deregistered) and started again. The
// lock key names our session in every consistent read throughout, sampled every 100ms.
func TestF7_LockSurvivesClientAgentRestart(t *testing.T) {
	c, logger := setup(t, 1)
	c1 := c.Node("c1")
	cc := conn(t, c, c1, logger)
	// Fallbacks from the discovery helper: the three servers' HTTP addresses.
	found, err := cc.DiscoverServers(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, s := range c.Servers() {
		want = append(want, s.HTTPAddr)
	}
	if !slices.Equal(found, want) {
		t.Fatalf("DiscoverServers = %v, want %v", found, want)
	}
	if err := cc.SetFallbacks(found); err != nil {
		t.Fatal(err)
	}

	prefix := "upgrader/consul/lock/clients/"
	l := newLock(t, cc.API(), lock.Options{Prefix: prefix, Holder: c1.Name, Address: c1.IP, Value: []byte("c1 upgrading")}, logger)
	lost, err := l.Acquire(ctxT(t, 30*time.Second))
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	sid := l.SessionID()
	control := controlSession(t, c1)
	observer := conn(t, c, c.Node("s1"), logger).API()
	smp := startSampler(t, observer, prefix, sid)

	ctx := ctxT(t, 2*time.Minute)
	start := time.Now()
	if err := c1.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := time.Since(start)
	// The leave deregisters c1 and destroys its sessions: prove the fault really happened.
	err = waitFor(ctx, "c1's control session to be destroyed by its leave", 100*time.Millisecond, func(ctx context.Context) (bool, error) {
		ok, err := sessionExists(ctx, observer, control)
		return err == nil && !ok, err
	})
	if err != nil {
		t.Fatal(err)
	}
	controlGone := time.Since(start)
	node, _, err := observer.Catalog().Node(c1.Name, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("c1 stopped (SIGTERM) in %s; its control session was gone after %s; c1 in catalog now: %v",
		stopped.Round(time.Millisecond), controlGone.Round(time.Millisecond), node != nil)

	if err := c1.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Since(start)
	// Keep holding for more than a TTL after the restart began: renewals went through the fallbacks.
	if err := waitFor(ctx, "a TTL to pass since the stop", time.Second, func(context.Context) (bool, error) {
		return time.Since(start) > lock.DefaultTTL+time.Second, nil
	}); err != nil {
		t.Fatal(err)
	}
	smp.report(t)
	t.Logf("c1 back and cluster healthy after %s; held for %s across the restart", back.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	if !isOpen(lost) {
		t.Fatalf("lost closed across the client restart: %v", l.Err())
	}
	held, err := l.StillHeld(ctx)
	if err != nil || !held {
		t.Fatalf("StillHeld after the restart = %v, %v", held, err)
	}
	assertReleased(t, ctx, l, observer, prefix, sid, c1.Name, lost)
}

// TestF7_LockSurvivesServerAgentRestart: the same through a server (a follower, so that no election mixes
// in), kept down until a session tied to that server's own node is gone (autopilot's dead-server clean-up
// removes the node; 8–12 s), then started again.
func TestF7_LockSurvivesServerAgentRestart(t *testing.T) {
	c, logger := setup(t, 0)
	ctx := ctxT(t, 3*time.Minute)
	followers, err := c.Followers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	via, watcher := followers[0], followers[1]
	cc := conn(t, c, via, logger)
	prefix := "upgrader/consul/lock/servers/"
	l := newLock(t, cc.API(), lock.Options{Prefix: prefix, Holder: via.Name, Address: via.IP, Value: []byte(via.Name + " upgrading")}, logger)
	lost, err := l.Acquire(ctxT(t, 30*time.Second))
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	sid := l.SessionID()
	control := controlSession(t, via)
	observer := conn(t, c, watcher, logger).API()
	smp := startSampler(t, observer, prefix, sid)

	start := time.Now()
	if err := via.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := time.Since(start)
	// Stay down until autopilot's clean-up took the server's node (and the control session) away, or 15s.
	downCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = waitFor(downCtx, "the stopped server's own session to be destroyed", 100*time.Millisecond, func(ctx context.Context) (bool, error) {
		ok, err := sessionExists(ctx, observer, control)
		return err == nil && !ok, err
	})
	cancel()
	down := time.Since(start)
	if err != nil {
		t.Logf("control session on %s still exists after %s down (autopilot clean-up did not fire): %v", via.Name, down.Round(time.Millisecond), err)
	} else {
		t.Logf("%s stopped in %s; its own no-check session was destroyed after %s down", via.Name, stopped.Round(time.Millisecond), down.Round(time.Millisecond))
	}
	if err := via.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Since(start)
	if err := waitFor(ctx, "a TTL to pass since the stop", time.Second, func(context.Context) (bool, error) {
		return time.Since(start) > lock.DefaultTTL+time.Second, nil
	}); err != nil {
		t.Fatal(err)
	}
	smp.report(t)
	t.Logf("%s back and cluster healthy after %s; held for %s across the restart", via.Name, back.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if !isOpen(lost) {
		t.Fatalf("lost closed across the server restart: %v", l.Err())
	}
	held, err := l.StillHeld(ctx)
	if err != nil || !held {
		t.Fatalf("StillHeld after the restart = %v, %v", held, err)
	}
	assertReleased(t, ctx, l, observer, prefix, sid, via.Name, lost)
}

// assertReleased releases l and checks every trace is gone: record entry, contender entry, session, anchor
// node; lost is closed with ErrReleased; a second Release is a no-op.
func assertReleased(t *testing.T, ctx context.Context, l *lock.Lock, observer *api.Client, prefix, sid, holder string, lost <-chan struct{}) {
	t.Helper()
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if isOpen(lost) || !errors.Is(l.Err(), lock.ErrReleased) {
		t.Fatalf("after Release: lost open=%v, Err=%v", isOpen(lost), l.Err())
	}
	if err := l.Release(ctx); err != nil || l.SessionID() != "" {
		t.Fatalf("second Release: %v (session %q)", err, l.SessionID())
	}
	pairs, _, err := observer.KV().List(prefix, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := names(pairs, prefix, sid); ok {
		t.Fatalf("still named after Release")
	}
	for _, p := range pairs {
		if p.Key == prefix+sid {
			t.Fatalf("contender entry left behind")
		}
	}
	if ok, err := sessionExists(ctx, observer, sid); ok || err != nil {
		t.Fatalf("session after Release: exists=%v err=%v", ok, err)
	}
	node, _, err := observer.Catalog().Node("upgrader-anchor-"+holder, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil || node != nil {
		t.Fatalf("anchor node after Release: %v, %v", node, err)
	}
}

// TestF7_LockSurvivesFrozenLocalAgent: the holder's local agent is frozen (SIGSTOP) for longer than a TTL:
// it accepts connections and never answers. Renewals and the watch reach a fallback once the failover
// client's header timeout expires (then the local agent cools down), and the lock key names our session
// throughout.
func TestF7_LockSurvivesFrozenLocalAgent(t *testing.T) {
	c, logger := setup(t, 1)
	ctx := ctxT(t, 2*time.Minute)
	c1 := c.Node("c1")
	cc := conn(t, c, c1, logger)
	prefix := "upgrader/consul/lock/clients/"
	l := newLock(t, cc.API(), lock.Options{Prefix: prefix, Holder: c1.Name, Address: c1.IP}, logger)
	lost, err := l.Acquire(ctxT(t, 30*time.Second))
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	observer := conn(t, c, c.Node("s1"), logger).API()
	smp := startSampler(t, observer, prefix, l.SessionID())

	pid := c1.Pid()
	if pid == 0 {
		t.Fatal("c1 is not running")
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	start := time.Now()
	if err := waitFor(ctx, "more than a TTL with c1 frozen", time.Second, func(context.Context) (bool, error) {
		return time.Since(start) > lock.DefaultTTL+5*time.Second, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	smp.report(t)
	t.Logf("c1 frozen for %s; header timeout %s", time.Since(start).Round(time.Millisecond), consulconn.DefaultHeaderTimeout)
	if !isOpen(lost) {
		t.Fatalf("lost closed while the local agent was frozen: %v", l.Err())
	}
	if held, err := l.StillHeld(ctx); err != nil || !held {
		t.Fatalf("StillHeld = %v, %v", held, err)
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
}
