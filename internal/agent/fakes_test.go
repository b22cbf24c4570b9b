package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/upgrader-dev/upgrader/internal/health"
	"github.com/upgrader-dev/upgrader/internal/install"
	"github.com/upgrader-dev/upgrader/internal/release"
	"github.com/upgrader-dev/upgrader/internal/rollout"
)

// world is a fake node and cluster for unit tests of the state machine: a client node "c1" whose "agent"
// runs the version written in its live binary file (real install.Binary files in a temp dir, holding
// "consul <version>"), a semaphore of limit 1, and the KV records. Every effect is logged as an event,
// in order, so tests can assert what happened before what. Unit tests only: the proofs run on real
// Consul (internal/fleet).
type world struct {
	t   *testing.T
	dir string
	bin install.Binary

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change (lock, target, control)
	events  []string

	running string          // version the agent runs; "" while it is down
	broken  map[string]bool // versions whose agent never comes up

	holder   string // session holding the lock ("" free)
	sessions int
	alive    map[string]bool // sessions that exist
	lost     map[string]chan struct{}

	target     rollout.Target
	targetIdx  uint64
	control    rollout.Control
	controlIdx uint64
	status     rollout.NodeStatus
	statuses   []rollout.NodeStatus
	haltFails  int // fail this many Halt calls before one succeeds
	outcomes   map[string]rollout.Outcome
	rolloutID  string
	restarts   int
	observes   int
	onObserve  func(w *world, running string) // called (unlocked) before each observation
	onStatus   func(w *world, s rollout.NodeStatus)
	onRestart  func(w *world)
}

func newWorld(t *testing.T, from, target string) *world {
	t.Helper()
	dir := t.TempDir()
	w := &world{t: t, dir: dir, bin: install.Binary{LivePath: filepath.Join(dir, "consul")},
		changed: make(chan struct{}), broken: map[string]bool{}, alive: map[string]bool{},
		lost: map[string]chan struct{}{}, outcomes: map[string]rollout.Outcome{}, running: from,
		targetIdx: 10, controlIdx: 1, control: rollout.Control{State: rollout.Running}}
	if target != "" {
		w.target = rollout.Target{Version: target}
	}
	w.writeFile(w.bin.LivePath, from)
	return w
}

func (w *world) writeFile(path, version string) {
	w.t.Helper()
	if err := os.WriteFile(path, []byte("consul "+version), 0o755); err != nil {
		w.t.Fatal(err)
	}
}

// liveVersion reads the version out of the live binary file.
func (w *world) liveVersion() string {
	b, err := os.ReadFile(w.bin.LivePath)
	if err != nil {
		return ""
	}
	return strings.TrimPrefix(string(b), "consul ")
}

func (w *world) event(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.eventLocked(format, args...)
}

func (w *world) eventLocked(format string, args ...any) {
	e := fmt.Sprintf(format, args...)
	w.events = append(w.events, e)
	w.t.Logf("event: %s", e)
}

// notify wakes every waiter; called with mu held.
func (w *world) notify() {
	close(w.changed)
	w.changed = make(chan struct{})
}

func (w *world) Events() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.events...)
}

// waitFor polls cond (under mu) until it holds or the test's deadline passes.
func (w *world) waitFor(what string, cond func(w *world) bool) {
	w.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		ok := cond(w)
		w.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	w.t.Fatalf("timed out waiting for %s; events: %v", what, w.Events())
}

func (w *world) setTarget(v string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.target = rollout.Target{Version: v}
	w.targetIdx++
	w.eventLocked("target %s", v)
	w.notify()
}

func (w *world) setControl(c rollout.Control) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.control = c
	w.controlIdx++
	w.eventLocked("control %s", c.State)
	w.notify()
}

// loseLock takes the lock away from its holder, as an invalidated session would.
func (w *world) loseLock() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.holder == "" {
		return
	}
	w.eventLocked("lock lost by %s", w.holder)
	if ch := w.lost[w.holder]; ch != nil {
		close(ch)
		delete(w.lost, w.holder)
	}
	delete(w.alive, w.holder)
	w.holder = ""
	w.notify()
}

// hold gives the lock to session id (another node), as if it held it.
func (w *world) hold(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.alive[id] = true
	w.holder = id
	w.notify()
}

func (w *world) free() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.eventLocked("release %s", w.holder)
	w.holder = ""
	w.notify()
}

// ---- agent components ----

type fakeFetcher struct{ w *world }

func (f fakeFetcher) Fetch(_ context.Context, product, version, _, _ string) (*release.Artifact, error) {
	if version == "9.9.9" {
		return nil, errors.New("release: not found")
	}
	p := filepath.Join(f.w.dir, "release-"+version)
	f.w.writeFile(p, version)
	return &release.Artifact{Product: product, Version: version, BinaryPath: p}, nil
}

type fakeInstaller struct{ w *world }

func (f fakeInstaller) Stage(src, version string) (string, error) { return f.w.bin.Stage(src, version) }
func (f fakeInstaller) Swap(staged, from string) (string, error) {
	rb, err := f.w.bin.Swap(staged, from)
	f.w.event("swap %s -> %s (%v)", from, f.w.liveVersion(), err)
	return rb, err
}
func (f fakeInstaller) Rollback(rb string) error {
	err := f.w.bin.Rollback(rb)
	f.w.event("restore %s (%v)", f.w.liveVersion(), err)
	return err
}
func (f fakeInstaller) RollbackPath(v string) string { return f.w.bin.RollbackPath(v) }

type fakeRestarter struct{ w *world }

func (f fakeRestarter) Restart(ctx context.Context) error {
	w := f.w
	v := w.liveVersion()
	w.mu.Lock()
	w.restarts++
	w.running = v
	if w.broken[v] {
		w.running = ""
	}
	w.eventLocked("restart on %s", v)
	hook := w.onRestart
	w.mu.Unlock()
	if hook != nil {
		hook(w)
	}
	return nil
}

func (w *world) observe(ctx context.Context) (health.Observation, error) {
	if err := ctx.Err(); err != nil {
		return health.Observation{}, err
	}
	w.mu.Lock()
	w.observes++
	running, hook := w.running, w.onObserve
	w.mu.Unlock()
	if hook != nil {
		hook(w, running)
		w.mu.Lock()
		running = w.running
		w.mu.Unlock()
	}
	if running == "" {
		return health.Observation{}, fmt.Errorf("%w: connection refused", health.ErrLocalAgentUnreachable)
	}
	return health.Observation{
		At:          time.Now(),
		Local:       health.LocalAgent{NodeName: "c1", Version: running},
		LocalLeader: "10.0.0.1:8300",
		Members:     []health.Member{{Name: "c1", Role: "client", Version: running, Status: health.MemberAlive}},
	}, nil
}

type fakeCluster struct{}

func (fakeCluster) TransferLeader(context.Context, string) error { return nil }
func (fakeCluster) Snapshot(context.Context, string) error       { return nil }
func (fakeCluster) ServersUpgrading(context.Context) (bool, error) {
	return false, nil
}
func (w *world) locks(prefix string, limit int, session string) (Lock, error) {
	return &fakeLock{w: w, resume: session}, nil
}

// fakeLock is one acquisition, with the lock package's semantics: a resumed session that still holds
// the slot re-enters it; otherwise a new session waits for the slot.
type fakeLock struct {
	w      *world
	resume string
	id     string
}

func (l *fakeLock) Acquire(ctx context.Context) (<-chan struct{}, error) {
	w := l.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if l.resume != "" && w.alive[l.resume] && w.holder == l.resume {
		l.id = l.resume
		w.eventLocked("re-enter %s", l.id)
		return w.lost[l.id], nil
	}
	w.sessions++
	id := fmt.Sprintf("s%d", w.sessions)
	w.alive[id] = true
	for w.holder != "" {
		ch := w.changed
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			w.mu.Lock()
			delete(w.alive, id)
			return nil, fmt.Errorf("%w: %w", ErrNotAcquired, ctx.Err())
		case <-ch:
		}
		w.mu.Lock()
	}
	w.holder, l.id = id, id
	w.lost[id] = make(chan struct{})
	w.eventLocked("acquire %s", id)
	w.notify()
	return w.lost[id], nil
}

func (l *fakeLock) Release(context.Context) error {
	w := l.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if l.id == "" {
		return nil
	}
	if w.holder == l.id {
		w.holder = ""
		w.eventLocked("release %s", l.id)
		if ch := w.lost[l.id]; ch != nil {
			close(ch)
		}
		delete(w.lost, l.id)
	}
	delete(w.alive, l.id)
	l.id = ""
	w.notify()
	return nil
}

func (l *fakeLock) StillHeld(context.Context) (bool, error) {
	l.w.mu.Lock()
	defer l.w.mu.Unlock()
	return l.id != "" && l.w.holder == l.id, nil
}

func (l *fakeLock) SessionID() string {
	l.w.mu.Lock()
	defer l.w.mu.Unlock()
	return l.id
}

// ---- store ----

type fakeStore struct{ w *world }

func (s fakeStore) ReadTarget(ctx context.Context) (rollout.Target, []byte, uint64, error) {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	if s.w.target.Version == "" {
		return rollout.Target{}, nil, s.w.targetIdx, &rollout.TargetError{Index: s.w.targetIdx, Err: rollout.ErrNoTarget}
	}
	return s.w.target, nil, s.w.targetIdx, nil
}

func (s fakeStore) WatchTarget(ctx context.Context, idx uint64) (rollout.Target, []byte, uint64, error) {
	w := s.w
	w.mu.Lock()
	for w.targetIdx == idx {
		ch := w.changed
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			return rollout.Target{}, nil, idx, ctx.Err()
		case <-ch:
		}
		w.mu.Lock()
	}
	w.mu.Unlock()
	return s.ReadTarget(ctx)
}

func (s fakeStore) ReadControl(context.Context) (rollout.Control, uint64, error) {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	return s.w.control, s.w.controlIdx, nil
}

func (s fakeStore) WatchControl(ctx context.Context, idx uint64) (rollout.Control, uint64, error) {
	w := s.w
	w.mu.Lock()
	defer w.mu.Unlock()
	for idx != 0 && w.controlIdx == idx {
		ch := w.changed
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			w.mu.Lock()
			return rollout.Control{}, idx, ctx.Err()
		case <-ch:
		}
		w.mu.Lock()
	}
	return w.control, max(w.controlIdx, 1), nil
}

func (s fakeStore) Halt(_ context.Context, node, reason string) (rollout.Control, bool, error) {
	w := s.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.haltFails > 0 {
		w.haltFails--
		w.eventLocked("halt failed")
		return rollout.Control{}, false, errors.New("500 No cluster leader")
	}
	if w.control.State == rollout.Halted {
		return w.control, false, nil
	}
	w.control = rollout.Control{State: rollout.Halted, HaltedBy: node, By: node, Reason: reason}
	w.controlIdx++
	w.eventLocked("halt by %s", node)
	w.notify()
	return w.control, true, nil
}

func (s fakeStore) PutNodeStatus(_ context.Context, st rollout.NodeStatus) error {
	w := s.w
	w.mu.Lock()
	w.status = st
	w.statuses = append(w.statuses, st)
	hook := w.onStatus
	w.mu.Unlock()
	if hook != nil {
		hook(w, st)
	}
	return nil
}

func (s fakeStore) GetNodeStatus(_ context.Context, node string) (rollout.NodeStatus, bool, error) {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	return s.w.status, s.w.status.Node == node, nil
}

func (s fakeStore) StartRollout(_ context.Context, t rollout.Target, idx uint64) (rollout.Rollout, error) {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	s.w.rolloutID = rollout.RolloutID(t.Version, idx)
	return rollout.Rollout{ID: s.w.rolloutID, Target: t, TargetIndex: idx}, nil
}

func (s fakeStore) RecordSnapshot(context.Context, string, rollout.Snapshot) (rollout.Rollout, error) {
	return rollout.Rollout{}, nil
}

func (s fakeStore) RecordOutcome(_ context.Context, id, node string, o rollout.Outcome) (rollout.Rollout, error) {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	s.w.outcomes[node] = o
	return rollout.Rollout{ID: id}, nil
}

func (s fakeStore) ReadRollout(context.Context) (rollout.Rollout, error) {
	return rollout.Rollout{}, rollout.ErrNoRollout
}

func (s fakeStore) ListNodeStatus(context.Context) ([]rollout.NodeStatus, error) {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	return []rollout.NodeStatus{s.w.status}, nil
}

func (s fakeStore) FinishRollout(_ context.Context, id string) (rollout.Rollout, error) {
	return rollout.Rollout{ID: id}, nil
}

// newAgent builds an Agent on w with short, test-sized timings.
func (w *world) newAgent(t *testing.T, mutate func(*Options)) *Agent {
	t.Helper()
	o := Options{
		Node: "c1", StateDir: w.dir, Fetcher: fakeFetcher{w}, Installer: fakeInstaller{w},
		Restarter: fakeRestarter{w}, Locks: w.locks, Observe: w.observe, Cluster: fakeCluster{},
		Store: fakeStore{w}, Stabilization: 30 * time.Millisecond, ConfirmTimeout: 400 * time.Millisecond,
		Interval: 5 * time.Millisecond, AcquireTimeout: time.Second, Recheck: 10 * time.Millisecond,
		Logger: hclog.New(&hclog.LoggerOptions{Name: "test", Level: hclog.Debug, Output: testWriter{t}}),
	}
	if mutate != nil {
		mutate(&o)
	}
	a, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// start runs a in the background; the returned func cancels it and waits for Run to return.
func start(t *testing.T, a *Agent) (cancel func()) {
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	cancel = func() {
		once.Do(func() {
			stop()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("Run did not return after its context was cancelled")
			}
		})
	}
	t.Cleanup(cancel)
	return cancel
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// indexOf returns the index of the first event with prefix p at or after from, or -1.
func indexOf(events []string, p string, from int) int {
	for i := max(from, 0); i < len(events); i++ {
		if strings.HasPrefix(events[i], p) {
			return i
		}
	}
	return -1
}

func countPrefix(events []string, p string) int {
	n := 0
	for _, e := range events {
		if strings.HasPrefix(e, p) {
			n++
		}
	}
	return n
}
