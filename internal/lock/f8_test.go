package lock_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/upgrader-dev/upgrader/internal/lock"
	"github.com/upgrader-dev/upgrader/internal/testcluster"
)

// waitNewLeader waits until every server but old agrees on a non-empty leader other than old's.
func waitNewLeader(ctx context.Context, c *testcluster.Cluster, old *testcluster.Node) (string, error) {
	var leader string
	err := waitFor(ctx, "a new leader", 50*time.Millisecond, func(ctx context.Context) (bool, error) {
		seen := ""
		for _, s := range c.Servers() {
			if s == old {
				continue
			}
			l, err := s.API().Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
			if err != nil {
				return false, err
			}
			if l == "" || l == old.RPCAddr || (seen != "" && l != seen) {
				return false, fmt.Errorf("%s sees leader %q", s.Name, l)
			}
			seen = l
		}
		leader = seen
		return true, nil
	})
	return leader, err
}

// TestF8_LeaderKilledWhileHeld: kill -9 the leader while the lock is held through a client agent. The
// election's "No cluster leader" is ridden out (renewals and the watch retry), the lock key names our
// session throughout. Then two real losses close the lost channel: the session destroyed, and the
// semaphore key deleted.
func TestF8_LeaderKilledWhileHeld(t *testing.T) {
	c, logger := setup(t, 1)
	ctx := ctxT(t, 3*time.Minute)
	c1 := c.Node("c1")
	cc := conn(t, c, c1, logger)
	prefix := "upgrader/consul/lock/servers/"
	l := newLock(t, cc.API(), lock.Options{Prefix: prefix, Holder: c1.Name, Address: c1.IP}, logger)
	lost, err := l.Acquire(ctxT(t, 30*time.Second))
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	sid := l.SessionID()
	observer := conn(t, c, c1, logger).API()
	smp := startSampler(t, observer, prefix, sid)

	leader, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	next, err := waitNewLeader(ctx, c, leader)
	if err != nil {
		t.Fatal(err)
	}
	elected := time.Since(start)
	// Hold on for more than a TTL after the kill: several renewals must have gone through the new leader.
	if err := waitFor(ctx, "a TTL to pass since the kill", time.Second, func(context.Context) (bool, error) {
		return time.Since(start) > lock.DefaultTTL+time.Second, nil
	}); err != nil {
		t.Fatal(err)
	}
	smp.report(t)
	t.Logf("killed leader %s (-9); %s leads after %s; lock held for %s since", leader.Name, next, elected.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if !isOpen(lost) {
		t.Fatalf("lost closed during the election: %v", l.Err())
	}
	if held, err := l.StillHeld(ctx); err != nil || !held {
		t.Fatalf("StillHeld after the election = %v, %v", held, err)
	}
	if err := leader.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}

	// Real loss 1: an operator destroys the session.
	start = time.Now()
	if _, err := observer.Session().Destroy(sid, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
	case <-ctx.Done():
		t.Fatal("lost did not close after the session was destroyed")
	}
	t.Logf("session destroyed: lost closed after %s: %v", time.Since(start).Round(time.Millisecond), l.Err())
	if !errors.Is(l.Err(), lock.ErrLost) || errors.Is(l.Err(), lock.ErrReleased) {
		t.Fatalf("Err = %v", l.Err())
	}
	if held, err := l.StillHeld(ctx); err != nil || held {
		t.Fatalf("StillHeld after the loss = %v, %v", held, err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release after a loss: %v", err)
	}

	// Real loss 2: the semaphore key is deleted under a fresh holding.
	lost, err = l.Acquire(ctxT(t, 30*time.Second))
	if err != nil {
		t.Fatalf("second Acquire: %v", err)
	}
	start = time.Now()
	if _, err := observer.KV().Delete(prefix+".lock", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
	case <-ctx.Done():
		t.Fatal("lost did not close after the key was deleted")
	}
	t.Logf("semaphore key deleted: lost closed after %s: %v", time.Since(start).Round(time.Millisecond), l.Err())
	if !errors.Is(l.Err(), lock.ErrNotHolder) {
		t.Fatalf("Err = %v, want ErrNotHolder", l.Err())
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release after a loss: %v", err)
	}
}
