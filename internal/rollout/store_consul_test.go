package rollout

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/upgrader-dev/upgrader/internal/testcluster"
)

// testBlock is this package's loopback block: 127.0.16.x.
const testBlock = 16

// countingKV passes through to Consul and counts Get calls, to show a watch does not spin.
type countingKV struct {
	KV
	gets atomic.Int64
}

func (k *countingKV) Get(key string, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error) {
	k.gets.Add(1)
	return k.KV.Get(key, q)
}

// TestStoreAgainstConsul runs every Store test against one real single-server Consul 1.16.1 agent;
// each subtest works under its own prefix.
func TestStoreAgainstConsul(t *testing.T) {
	if testing.Short() {
		t.Skip("real Consul test: skipped in -short")
	}
	// ACLs in default-deny, as in production: the Store uses the management token, and one subtest shows
	// what a token without KV rights gets.
	const mgmt = "8e2a1c5e-5b1f-4e55-9a43-3f2f5c0f0d16"
	c := testcluster.New(t, testcluster.Options{Block: testBlock, Servers: 1, Version: "1.16.1",
		ExtraConfig: `acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true
  tokens {
    initial_management = "` + mgmt + `"
    agent              = "` + mgmt + `"
  }
}`,
		ClientConfig: func(_ *testcluster.Node, cfg *api.Config) { cfg.Token = mgmt },
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	if err := c.Start(ctx); err != nil {
		t.Fatalf("failed to start consul: %v", err)
	}
	t.Logf("consul 1.16.1 agent ready in %s", time.Since(start).Round(time.Millisecond))
	kv := c.Servers()[0].API().KV()

	newStore := func(t *testing.T, opts ...Option) (*Store, *countingKV) {
		ckv := &countingKV{KV: kv}
		prefix := "test/" + strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()) + "/"
		s, err := NewStore(ckv, "consul", append([]Option{WithPrefix(prefix), WithLogger(testLogger(t)),
			WithRetry(10*time.Millisecond, 200*time.Millisecond)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		return s, ckv
	}
	put := func(t *testing.T, key, value string) uint64 {
		t.Helper()
		if _, err := kv.Put(&api.KVPair{Key: key, Value: []byte(value)}, nil); err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
		p, _, err := kv.Get(key, nil)
		if err != nil || p == nil {
			t.Fatalf("get %s: %v", key, err)
		}
		return p.ModifyIndex
	}

	t.Run("WatchTargetBlocksUntilPut", func(t *testing.T) {
		s, ckv := newStore(t, WithWaitTime(time.Second))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _, idx, err := s.WatchTarget(ctx, 0)
		var te *TargetError
		if !errors.As(err, &te) || !errors.Is(err, ErrNoTarget) || te.Index != idx || idx == 0 {
			t.Fatalf("missing target: idx %d, err %v", idx, err)
		}
		first := put(t, s.Keys().Target(), "1.16.0")
		tg, _, idx, err := s.WatchTarget(ctx, idx)
		if err != nil || tg.Version != "1.16.0" || idx != first {
			t.Fatalf("after first put: %+v idx %d (want %d) err %v", tg, idx, first, err)
		}

		type result struct {
			t   Target
			idx uint64
			err error
			at  time.Time
		}
		done := make(chan result, 1)
		before := ckv.gets.Load()
		go func() {
			tg, _, idx, err := s.WatchTarget(ctx, first)
			done <- result{tg, idx, err, time.Now()}
		}()
		// Let the watch block across more than two server-side wait timeouts (WaitTime 1s, plus
		// Consul's jitter of up to 1/16): it must keep blocking, not return the unchanged value.
		blockFor := 2500 * time.Millisecond
		select {
		case r := <-done:
			t.Fatalf("watch returned without a change: %+v", r)
		case <-time.After(blockFor):
		}
		putAt := time.Now()
		second := put(t, s.Keys().Target(), `{"version":"v1.16.1","client_concurrency":2}`)
		r := <-done
		if r.err != nil || r.t.Version != "1.16.1" || r.t.ClientConcurrency != 2 || r.idx != second {
			t.Fatalf("after second put: %+v idx %d (want %d) err %v", r.t, r.idx, second, r.err)
		}
		t.Logf("watch blocked %s with %d requests (WaitTime 1s); returned %s after the put",
			blockFor, ckv.gets.Load()-before, r.at.Sub(putAt).Round(time.Microsecond))
	})

	t.Run("InvalidTargetIsTypedAndWaitsForNextChange", func(t *testing.T) {
		s, ckv := newStore(t, WithWaitTime(time.Second))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		bad := put(t, s.Keys().Target(), "1.16\n")
		_, raw, idx, err := s.WatchTarget(ctx, 0)
		var te *TargetError
		if !errors.As(err, &te) {
			t.Fatalf("want *TargetError, got %v", err)
		}
		if te.Index != bad || idx != bad || string(raw) != "1.16\n" || string(te.Raw) != "1.16\n" {
			t.Fatalf("TargetError index %d / returned %d (want %d), raw %q", te.Index, idx, bad, raw)
		}
		if !strings.Contains(err.Error(), `target: "1.16" is not a full version: write e.g. 1.16.1`) {
			t.Fatalf("error text: %v", err)
		}
		t.Logf("caller would log: %v", err)

		done := make(chan error, 1)
		var got Target
		before := ckv.gets.Load()
		go func() {
			var err error
			got, _, _, err = s.WatchTarget(ctx, te.Index)
			done <- err
		}()
		select {
		case err := <-done:
			t.Fatalf("watch on a bad value returned without a change: %v", err)
		case <-time.After(1500 * time.Millisecond):
		}
		put(t, s.Keys().Target(), "1.16.1")
		if err := <-done; err != nil || got.Version != "1.16.1" {
			t.Fatalf("after fix: %+v %v", got, err)
		}
		t.Logf("bad value cost %d requests while waiting ~1.5s for the fix", ckv.gets.Load()-before)
	})

	t.Run("MissingTargetAndUnrelatedWrites", func(t *testing.T) {
		s, ckv := newStore(t, WithWaitTime(time.Second))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _, idx, err := s.WatchTarget(ctx, 0)
		if !errors.Is(err, ErrNoTarget) {
			t.Fatalf("want ErrNoTarget, got %v", err)
		}
		// Measure what Consul does to a watch on a missing key when another key is written: the
		// index it reports for a missing key is the whole KV store's.
		t0 := time.Now()
		woke := make(chan uint64, 1)
		go func() { _, _, i, _ := s.WatchTarget(ctx, idx); woke <- i }()
		put(t, "unrelated/key", "x")
		again := <-woke
		t.Logf("raw WatchTarget on a missing key: reported it missing again after %s, index %d -> %d",
			time.Since(t0).Round(time.Millisecond), idx, again)

		// TargetWatch must not report the missing target again for those writes.
		w := s.NewTargetWatch()
		if _, _, _, err := w.Next(ctx); !errors.Is(err, ErrNoTarget) {
			t.Fatalf("first Next: %v", err)
		}
		next := make(chan error, 1)
		var tg Target
		before := ckv.gets.Load()
		go func() {
			var err error
			tg, _, _, err = w.Next(ctx)
			next <- err
		}()
		for i := range 3 {
			put(t, s.Keys().Node(fmt.Sprintf("n%d", i)), "{}")
			put(t, "unrelated/key", "x")
		}
		select {
		case err := <-next:
			t.Fatalf("TargetWatch reported again after unrelated writes: %v", err)
		case <-time.After(2500 * time.Millisecond):
		}
		put(t, s.Keys().Target(), "1.16.1")
		if err := <-next; err != nil || tg.Version != "1.16.1" {
			t.Fatalf("after put: %+v %v", tg, err)
		}
		t.Logf("TargetWatch stayed quiet for 2.5s of unrelated writes using %d requests (WaitTime 1s)", ckv.gets.Load()-before)
	})

	t.Run("PermissionDeniedIsPermanent", func(t *testing.T) {
		cfg := api.DefaultConfig()
		cfg.Address, cfg.Token = c.Servers()[0].HTTPAddr, "" // the anonymous token: no rights under default-deny
		anon, err := api.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		s, err := NewStore(anon.KV(), "consul", WithPrefix("test/denied/"), WithLogger(testLogger(t)))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		_, _, _, werr := s.WatchTarget(ctx, 0)
		_, serr := s.SetTarget(ctx, Target{Version: "1.16.1"})
		_, _, herr := s.Halt(ctx, "n1", "x")
		perr := s.PutNodeStatus(ctx, NodeStatus{Node: "n1", Role: RoleServer})
		for name, err := range map[string]error{"WatchTarget": werr, "SetTarget": serr, "Halt": herr, "PutNodeStatus": perr} {
			if !errors.Is(err, ErrPermissionDenied) {
				t.Errorf("%s without rights: %v, want ErrPermissionDenied", name, err)
			}
		}
		t.Logf("4 calls refused in %s; e.g. %v", time.Since(start).Round(time.Millisecond), werr)
	})

	t.Run("SetTargetRoundTrips", func(t *testing.T) {
		now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
		s, _ := newStore(t, WithClock(fixedClock{now}))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		written, err := s.SetTarget(ctx, Target{Version: "v1.16.1", SetBy: "alice", Reason: "test"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.SetTarget(ctx, Target{Version: "1.16"}); err == nil {
			t.Fatal("SetTarget accepted 1.16")
		}
		got, raw, _, err := s.ReadTarget(ctx)
		if err != nil || !got.Equal(written) || !got.SetAt.Equal(now) || got.Version != "1.16.1" {
			t.Fatalf("read back %+v (%s), err %v; wrote %+v", got, raw, err, written)
		}
	})

	t.Run("HaltDoesNotClobber", func(t *testing.T) {
		s, _ := newStore(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, idx, err := s.ReadControl(ctx)
		if err != nil || c.State != Running || idx != 0 {
			t.Fatalf("missing control: %+v %d %v", c, idx, err)
		}
		if _, _, err := s.Pause(ctx, "bob", "freeze"); err != nil {
			t.Fatal(err)
		}

		// Eight nodes fail at once: exactly one halt wins, and its reason stays.
		const n = 8
		type res struct {
			c   Control
			set bool
			err error
		}
		results := make([]res, n)
		var wg sync.WaitGroup
		start := time.Now()
		for i := range n {
			wg.Go(func() {
				c, set, err := s.Halt(ctx, fmt.Sprintf("node-%d", i), fmt.Sprintf("failure %d", i))
				results[i] = res{c, set, err}
			})
		}
		wg.Wait()
		var winner string
		for i, r := range results {
			if r.err != nil {
				t.Fatalf("halt %d: %v", i, r.err)
			}
			if r.set {
				if winner != "" {
					t.Fatalf("two halts won: %s and node-%d", winner, i)
				}
				winner = fmt.Sprintf("node-%d", i)
			}
		}
		final, idx, err := s.ReadControl(ctx)
		if err != nil || final.State != Halted || final.HaltedBy != winner || final.Reason != "failure "+strings.TrimPrefix(winner, "node-") {
			t.Fatalf("final control %+v (winner %q) err %v", final, winner, err)
		}
		for i, r := range results {
			if r.c.HaltedBy != winner {
				t.Errorf("halt %d saw halted_by %q, want %q", i, r.c.HaltedBy, winner)
			}
		}
		t.Logf("%d concurrent halts: %s won in %s", n, winner, time.Since(start).Round(time.Millisecond))

		if _, _, err := s.Pause(ctx, "bob", "over a halt"); !errors.Is(err, ErrHalted) {
			t.Fatalf("pause over halt: %v", err)
		}
		if err := s.SetControl(ctx, Control{State: Running}, idx-1); !errors.Is(err, ErrConflict) {
			t.Fatalf("stale SetControl: %v", err)
		}
		if c, set, err := s.Resume(ctx, "carol", "fixed"); err != nil || !set || c.State != Running {
			t.Fatalf("resume: %+v %v %v", c, set, err)
		}
		if c, set, err := s.Halt(ctx, "node-x", "later failure"); err != nil || !set || c.HaltedBy != "node-x" {
			t.Fatalf("halt after resume: %+v %v %v", c, set, err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		defer wcancel()
		if c, _, err := s.WatchControl(wctx, 0); err != nil || c.HaltedBy != "node-x" {
			t.Fatalf("watch control: %+v %v", c, err)
		}
	})

	t.Run("NodeStatuses", func(t *testing.T) {
		now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
		s, _ := newStore(t, WithClock(fixedClock{now}))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, st := range []NodeStatus{
			{Node: "c1", Role: RoleClient, Version: "1.16.0", State: StateWaiting, Step: "servers first"},
			{Node: "s2", Role: RoleServer, Version: "1.16.1", State: StateDone},
			{Node: "s1", Role: RoleServer, Version: "1.16.0", State: StateFailed, LastError: "gate timed out"},
		} {
			if err := s.PutNodeStatus(ctx, st.Transition(st.State, st.Step, now.Add(-time.Minute))); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.PutNodeStatus(ctx, NodeStatus{Node: "bad/name", Role: RoleClient}); !errors.Is(err, ErrBadKey) {
			t.Fatalf("bad node name: %v", err)
		}
		put(t, s.Keys().Node("garbled"), "not json")
		put(t, s.Keys().Node("deeper")+"/x", "{}")

		got, err := s.ListNodeStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, st := range got {
			names = append(names, st.Node+"="+string(st.State))
		}
		if want := "c1=waiting garbled=unknown s1=failed s2=done"; strings.Join(names, " ") != want {
			t.Fatalf("statuses %v, want %s", names, want)
		}
		if !got[0].Updated.Equal(now) || !got[0].Since.Equal(now.Add(-time.Minute)) {
			t.Errorf("timestamps: %+v", got[0])
		}
		st, found, err := s.GetNodeStatus(ctx, "s1")
		if err != nil || !found || st.LastError != "gate timed out" {
			t.Fatalf("get s1: %+v %v %v", st, found, err)
		}
		if _, found, err := s.GetNodeStatus(ctx, "nobody"); err != nil || found {
			t.Fatalf("get missing: %v %v", found, err)
		}
		var b strings.Builder
		if err := FormatStatusTable(&b, got, Control{State: Running}, Target{Version: "1.16.1"}, now); err != nil {
			t.Fatal(err)
		}
		t.Logf("status table from Consul:\n%s", b.String())
	})

	t.Run("RolloutRecords", func(t *testing.T) {
		now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
		s, _ := newStore(t, WithClock(fixedClock{now}))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		t1 := Target{Version: "1.16.1", ClientConcurrency: 1}
		r, err := s.StartRollout(ctx, t1, 42)
		if err != nil || r.ID != "1.16.1-42" {
			t.Fatalf("start: %+v %v", r, err)
		}
		again, err := s.StartRollout(ctx, t1, 42)
		if err != nil || again.ID != r.ID || !again.StartedAt.Equal(r.StartedAt) {
			t.Fatalf("second start must return the same rollout: %+v %v", again, err)
		}
		if _, err := s.RecordSnapshot(ctx, r.ID, Snapshot{Path: "/var/lib/upgrader/snap", Node: "s1"}); err != nil {
			t.Fatal(err)
		}

		// Eight nodes report at once: every outcome lands (check-and-set retries, no lost update).
		const n = 8
		var wg sync.WaitGroup
		errs := make([]error, n)
		start := time.Now()
		for i := range n {
			wg.Go(func() {
				_, errs[i] = s.RecordOutcome(ctx, r.ID, fmt.Sprintf("n%d", i), Outcome{State: StateDone, From: "1.16.0", To: "1.16.1"})
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		cur, err := s.ReadRollout(ctx)
		if err != nil || len(cur.Outcomes) != n || cur.Snapshot == nil || cur.Snapshot.Node != "s1" {
			t.Fatalf("record after concurrent outcomes: %+v %v", cur, err)
		}
		t.Logf("%d concurrent RecordOutcome calls all landed in %s", n, time.Since(start).Round(time.Millisecond))

		if _, err := s.RecordOutcome(ctx, "1.16.1-1", "n1", Outcome{State: StateDone}); !errors.Is(err, ErrRolloutMismatch) {
			t.Fatalf("outcome for another rollout: %v", err)
		}
		fin, err := s.FinishRollout(ctx, r.ID)
		if err != nil || !fin.Finished() {
			t.Fatalf("finish: %+v %v", fin, err)
		}
		if _, err := s.FinishRollout(ctx, r.ID); err != nil {
			t.Fatalf("finish again: %v", err)
		}

		// A new target supersedes an unfinished rollout; an older one is refused.
		r2, err := s.StartRollout(ctx, Target{Version: "1.16.2", ClientConcurrency: 1}, 50)
		if err != nil || r2.ID != "1.16.2-50" || len(r2.Outcomes) != 0 {
			t.Fatalf("start 2: %+v %v", r2, err)
		}
		r3, err := s.StartRollout(ctx, Target{Version: "1.16.3", ClientConcurrency: 1}, 60)
		if err != nil || r3.ID != "1.16.3-60" {
			t.Fatalf("start 3: %+v %v", r3, err)
		}
		if _, err := s.StartRollout(ctx, Target{Version: "1.16.2", ClientConcurrency: 1}, 50); !errors.Is(err, ErrRolloutMismatch) {
			t.Fatalf("stale start: %v", err)
		}
		hist, err := s.ListHistory(ctx)
		if err != nil || len(hist) != 2 {
			t.Fatalf("history: %+v %v", hist, err)
		}
		byID := map[string]Rollout{}
		for _, h := range hist {
			byID[h.ID] = h
		}
		if h := byID["1.16.1-42"]; len(h.Outcomes) != n || !h.Finished() {
			t.Errorf("history of 1.16.1-42: %+v", h)
		}
		if h := byID["1.16.2-50"]; h.SupersededBy != "1.16.3-60" || !h.Finished() {
			t.Errorf("history of 1.16.2-50: %+v", h)
		}
	})
}

type fixedClock struct{ t time.Time }

func (c fixedClock) Now() time.Time { return c.t }
