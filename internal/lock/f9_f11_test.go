package lock_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/upgrader-dev/upgrader/internal/lock"
)

// TestF9_AcquireAbortedIsNotAcquired: an Acquire whose context ends while another node holds the slot
// returns (nil, error wrapping ErrNotAcquired and the context's error), promptly, and leaves nothing
// behind (no contender entry, no session). Consul's own api.Semaphore returns (nil, nil) in that case:
// shown first, as the fault being fixed.
func TestF9_AcquireAbortedIsNotAcquired(t *testing.T) {
	c, logger := setup(t, 1)
	ctx := ctxT(t, 2*time.Minute)
	prefix := "upgrader/consul/lock/servers/"
	s1 := c.Node("s1")
	observer := s1.API()

	// The fault: api.Semaphore with a closed stop channel says neither "acquired" nor "error".
	sem, err := observer.SemaphoreOpts(&api.SemaphoreOptions{Prefix: "f9/api-semaphore/", Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	close(stop)
	ch, err := sem.Acquire(stop)
	t.Logf("api.Semaphore.Acquire with a closed stop channel returned (%v, %v)", ch, err)
	if ch != nil || err != nil {
		t.Fatalf("expected Consul's (nil, nil), got (%v, %v)", ch, err)
	}

	holder := newLock(t, conn(t, c, s1, logger).API(), lock.Options{Prefix: prefix, Holder: "s1", Address: s1.IP}, logger)
	if _, err := holder.Acquire(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	c1 := c.Node("c1")
	waiter := newLock(t, conn(t, c, c1, logger).API(), lock.Options{Prefix: prefix, Holder: "c1", Address: c1.IP}, logger)

	for _, tc := range []struct {
		name    string
		ctx     func() (context.Context, context.CancelFunc)
		wantErr error
	}{
		{"deadline while waiting", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 2*time.Second)
		}, context.DeadlineExceeded},
		{"cancelled while waiting (shutdown)", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(1500*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
		{"already cancelled", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, cancel
		}, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			actx, cancel := tc.ctx()
			defer cancel()
			lost, err := waiter.Acquire(actx)
			if lost != nil || !errors.Is(err, lock.ErrNotAcquired) || !errors.Is(err, tc.wantErr) {
				t.Fatalf("Acquire = (%v, %v); want (nil, ErrNotAcquired wrapping %v)", lost, err, tc.wantErr)
			}
			t.Logf("Acquire: %v", err)
			if waiter.SessionID() != "" {
				t.Fatalf("session kept after a failed Acquire: %s", waiter.SessionID())
			}
			pairs, _, err := observer.KV().List(prefix, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
			if err != nil {
				t.Fatal(err)
			}
			if ok, why := names(pairs, prefix, holder.SessionID()); !ok || len(pairs) != 2 {
				t.Fatalf("after the aborted Acquire the prefix holds %d keys (want the record and the holder's entry); holder named=%v %s", len(pairs), ok, why)
			}
			sessions, _, err := observer.Session().Node("upgrader-anchor-c1", (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
			if err != nil || len(sessions) != 0 {
				t.Fatalf("waiter's sessions left behind: %v %v", sessions, err)
			}
		})
	}
	// The abort latency proper: from the context's end to Acquire's return.
	actx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = waiter.Acquire(actx)
	deadline, _ := actx.Deadline()
	t.Logf("abort latency: Acquire returned %s after its deadline (blocking queries carry the context; WaitTime is %s)",
		time.Since(deadline).Round(time.Millisecond), lock.DefaultWaitTime)
	if !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatal(err)
	}
}

// TestF11_LimitConflict: an upgrader configured with limit 1 meets a semaphore created with limit 2 (by
// Consul's own api.Semaphore, proving the KV layout is shared): a clear error naming both limits, nothing
// acquired, nothing left behind. And the other way round, api.Semaphore refuses our record.
func TestF11_LimitConflict(t *testing.T) {
	c, logger := setup(t, 0)
	ctx := ctxT(t, 2*time.Minute)
	prefix := "upgrader/consul/lock/clients/"
	s1, s2 := c.Node("s1"), c.Node("s2")

	other, err := s1.API().SemaphoreOpts(&api.SemaphoreOptions{Prefix: prefix, Limit: 2, SessionName: "other upgrader, limit 2"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Acquire(nil); err != nil {
		t.Fatal(err)
	}
	ours := newLock(t, conn(t, c, s2, logger).API(), lock.Options{Prefix: prefix, Limit: 1, Holder: "s2", Address: s2.IP}, logger)
	start := time.Now()
	lost, err := ours.Acquire(ctxT(t, 30*time.Second))
	t.Logf("Acquire returned after %s: %v", time.Since(start).Round(time.Millisecond), err)
	var lc *lock.LimitConflictError
	if lost != nil || !errors.Is(err, lock.ErrNotAcquired) || !errors.Is(err, lock.ErrLimitConflict) || !errors.As(err, &lc) {
		t.Fatalf("want a LimitConflictError, got (%v, %v)", lost, err)
	}
	if lc.Theirs != 2 || lc.Ours != 1 || !strings.Contains(err.Error(), "semaphore limit conflict: the lock at "+prefix+" says 2, this upgrader is configured with 1") {
		t.Fatalf("error does not name both limits: %v", err)
	}
	if ours.SessionID() != "" {
		t.Fatal("session kept after the conflict")
	}
	if err := other.Release(); err != nil {
		t.Fatal(err)
	}

	// The operator fixes it as the error says: delete the record while nobody holds it.
	if _, err := s1.API().KV().Delete(prefix+".lock", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ours.Acquire(ctxT(t, 30*time.Second)); err != nil {
		t.Fatalf("Acquire after the fix: %v", err)
	}
	other2, err := s1.API().SemaphoreOpts(&api.SemaphoreOptions{Prefix: prefix, Limit: 2, SemaphoreTryOnce: true, SemaphoreWaitTime: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, err = other2.Acquire(nil)
	t.Logf("api.Semaphore (limit 2) against our record (limit 1): %v", err)
	if err == nil || !strings.Contains(err.Error(), "limit conflict") {
		t.Fatalf("api.Semaphore should see the conflict too, got %v", err)
	}
	if held, err := ours.StillHeld(ctx); err != nil || !held {
		t.Fatalf("StillHeld = %v, %v", held, err)
	}
}

// TestF11_DeadHolderPruned: the record lists a holder whose session is gone (it crashed; its contender
// entry was released, behavior "release"). The next contender prunes it once it has been seen dead for
// LockDelay, instead of waiting forever, and deletes its stale contender entry.
func TestF11_DeadHolderPruned(t *testing.T) {
	c, logger := setup(t, 0)
	ctx := ctxT(t, 2*time.Minute)
	prefix := "upgrader/consul/lock/servers/"
	s1, s2 := c.Node("s1"), c.Node("s2")
	kv := s1.API().KV()

	dead, _, err := s1.API().Session().CreateNoChecks(&api.SessionEntry{Name: "crashed upgrader", Behavior: api.SessionBehaviorRelease, LockDelay: time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _, err := kv.Acquire(&api.KVPair{Key: prefix + dead, Value: []byte("s9 upgrading 1.16.0 -> 1.16.1"), Session: dead, Flags: api.SemaphoreFlagValue}, nil); err != nil || !ok {
		t.Fatalf("contender entry: %v %v", ok, err)
	}
	rec, _ := json.Marshal(map[string]any{"Limit": 1, "Holders": map[string]bool{dead: true}})
	if ok, _, err := kv.CAS(&api.KVPair{Key: prefix + ".lock", Value: rec, Flags: api.SemaphoreFlagValue}, nil); err != nil || !ok {
		t.Fatalf("record: %v %v", ok, err)
	}
	if _, err := s1.API().Session().Destroy(dead, nil); err != nil {
		t.Fatal(err)
	}
	if p, _, err := kv.Get(prefix+dead, nil); err != nil || p == nil || p.Session != "" {
		t.Fatalf("the dead holder's entry should remain, released: %+v %v", p, err)
	}

	l := newLock(t, conn(t, c, s2, logger).API(), lock.Options{Prefix: prefix, Holder: "s2", Address: s2.IP}, logger)
	start := time.Now()
	if _, err := l.Acquire(ctxT(t, 60*time.Second)); err != nil {
		t.Fatalf("Acquire with a dead holder listed: %v", err)
	}
	t.Logf("dead holder pruned and slot taken after %s (LockDelay %s)", time.Since(start).Round(time.Millisecond), lock.DefaultLockDelay)
	p, _, err := kv.Get(prefix+".lock", (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Limit   int
		Holders map[string]bool
	}
	if err := json.Unmarshal(p.Value, &got); err != nil {
		t.Fatal(err)
	}
	if got.Limit != 1 || len(got.Holders) != 1 || !got.Holders[l.SessionID()] {
		t.Fatalf("record after pruning: %+v", got)
	}
	if p, _, err := kv.Get(prefix+dead, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx)); err != nil || p != nil {
		t.Fatalf("stale contender entry not deleted: %+v %v", p, err)
	}
}
