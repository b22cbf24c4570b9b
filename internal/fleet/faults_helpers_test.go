package fleet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/upgrader-dev/upgrader/internal/agent"
	"github.com/upgrader-dev/upgrader/internal/rollout"
	"github.com/upgrader-dev/upgrader/internal/testbin"
)

// The F-tests' own eyes, next to the Monitor: what they assert on that the monitor does not see. The
// watcher samples every 100ms, through a node the rollout never restarts: which NODE the server lock
// names (sessions mapped to their holder through the session's anchor node), every server's own
// version (from its /v1/agent/self), autopilot health, the rollout control, every managed node's status
// record, journal step, and live binary, identified by its SHA-256 (re-hashed whenever the file's
// inode, size or mtime changes, so a half-written binary cannot hide).

// wsample is one watcher sample.
type wsample struct {
	At        time.Time
	LockKnown bool
	Holders   []string          // node names holding the server lock (session IDs when unmapped)
	Version   map[string]string // server -> version its agent reports ("" = did not answer)
	Binary    map[string]string // managed node -> version of its live binary ("?<sha>" for unknown bytes)
	Journal   map[string]agent.Step
	Status    map[string]rollout.NodeStatus
	Control   rollout.ControlState
	APHealthy bool // autopilot healthy with a failure tolerance of at least 1
}

type watcher struct {
	f       *Fleet
	c       *api.Client
	store   *rollout.Store
	lockKey string
	known   map[string]string // sha256 -> version label

	mu       sync.Mutex
	samples  []wsample
	sessions map[string]string        // session -> node
	files    map[string]fileIdentity  // live path -> identity last hashed
	fileVer  map[string]string        // live path -> version label of that identity
	hashTime map[string]time.Duration // live path -> longest hash time, for the log
}

type fileIdentity struct {
	ino, size int64
	mtime     time.Time
}

// newWatcher watches f through the unmanaged node via; known maps binary paths to version labels.
func newWatcher(t *testing.T, f *Fleet, via string, known map[string]string) *watcher {
	t.Helper()
	store, err := f.Store(via)
	if err != nil {
		t.Fatal(err)
	}
	w := &watcher{f: f, c: f.Cluster.Node(via).API(), store: store,
		lockKey: rollout.ServerLockPrefix(rollout.DefaultPrefix, "consul") + ".lock",
		known:   map[string]string{}, sessions: map[string]string{}, files: map[string]fileIdentity{},
		fileVer: map[string]string{}, hashTime: map[string]time.Duration{}}
	for path, label := range known {
		sum, err := sha256File(path)
		if err != nil {
			t.Fatal(err)
		}
		w.known[sum] = label
	}
	return w
}

// run samples until ctx ends; call it in a goroutine.
func (w *watcher) run(ctx context.Context) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s := w.sample(ctx)
		if ctx.Err() != nil {
			return
		}
		w.mu.Lock()
		w.samples = append(w.samples, s)
		w.mu.Unlock()
	}
}

func (w *watcher) sample(ctx context.Context) wsample {
	s := wsample{Version: map[string]string{}, Binary: map[string]string{}, Journal: map[string]agent.Step{},
		Status: map[string]rollout.NodeStatus{}}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, n := range w.f.Cluster.Servers() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var self struct{ Config struct{ Version string } }
			qctx, qcancel := context.WithTimeout(cctx, 300*time.Millisecond)
			defer qcancel()
			_, err := n.API().Raw().Query("/v1/agent/self", &self, (&api.QueryOptions{}).WithContext(qctx))
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				s.Version[n.Name] = self.Config.Version
			} else {
				s.Version[n.Name] = ""
			}
		}()
	}
	q := (&api.QueryOptions{}).WithContext(cctx)
	if pair, _, err := w.c.KV().Get(w.lockKey, q); err == nil {
		s.LockKnown = true
		if pair != nil {
			var v struct{ Holders map[string]bool }
			if json.Unmarshal(pair.Value, &v) != nil {
				s.LockKnown = false
			}
			for id, held := range v.Holders {
				if held {
					s.Holders = append(s.Holders, w.nodeOfSession(cctx, id))
				}
			}
			sort.Strings(s.Holders)
		}
	}
	if ap, err := w.c.Operator().AutopilotServerHealth(q); err == nil {
		s.APHealthy = ap.Healthy && ap.FailureTolerance >= 1
	}
	if c, _, err := w.store.ReadControl(cctx); err == nil {
		s.Control = c.State
	}
	if sts, err := w.store.ListNodeStatus(cctx); err == nil {
		for _, st := range sts {
			s.Status[st.Node] = st
		}
	}
	for _, n := range w.f.Managed() {
		u := w.f.Upgrader(n.Name)
		s.Binary[n.Name] = w.binaryVersion(u.LivePath)
		if j, err := readJournal(u.StateDir); err == nil && j != nil {
			s.Journal[n.Name] = j.Step
		}
	}
	wg.Wait()
	s.At = time.Now()
	return s
}

// nodeOfSession maps a lock session to its holder through the session's anchor node
// ("upgrader-anchor-<holder>"), caching the answer.
func (w *watcher) nodeOfSession(ctx context.Context, id string) string {
	w.mu.Lock()
	node, ok := w.sessions[id]
	w.mu.Unlock()
	if ok {
		return node
	}
	se, _, err := w.c.Session().Info(id, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil || se == nil {
		return id
	}
	node = strings.TrimPrefix(se.Node, "upgrader-anchor-")
	w.mu.Lock()
	w.sessions[id] = node
	w.mu.Unlock()
	return node
}

// binaryVersion identifies the live binary at path by its content.
func (w *watcher) binaryVersion(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "!" + err.Error()
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	id := fileIdentity{size: fi.Size(), mtime: fi.ModTime()}
	if st != nil {
		id.ino = int64(st.Ino)
	}
	w.mu.Lock()
	if prev, ok := w.files[path]; ok && prev == id {
		v := w.fileVer[path]
		w.mu.Unlock()
		return v
	}
	w.mu.Unlock()
	start := time.Now()
	sum, err := sha256File(path)
	if err != nil {
		return "!" + err.Error()
	}
	v, ok := w.known[sum]
	if !ok {
		v = "?" + sum
	}
	w.mu.Lock()
	w.files[path], w.fileVer[path] = id, v
	w.hashTime[path] = max(w.hashTime[path], time.Since(start))
	w.mu.Unlock()
	return v
}

func (w *watcher) all() []wsample {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]wsample(nil), w.samples...)
}

// checkBinaries fails for every sample in which a managed node's live binary was not one of the known
// complete binaries, and returns how many samples (and binary changes) it looked at.
func (w *watcher) checkBinaries(t *testing.T) (samples, changes int) {
	t.Helper()
	prev := map[string]string{}
	for _, s := range w.all() {
		samples++
		for node, v := range s.Binary {
			if strings.HasPrefix(v, "?") || strings.HasPrefix(v, "!") {
				t.Errorf("%s: live binary of %s is not a complete known binary: %s", s.At.Format("15:04:05.000"), node, v)
			}
			if p, ok := prev[node]; ok && p != v {
				changes++
			}
			prev[node] = v
		}
	}
	return samples, changes
}

func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func readJournal(stateDir string) (*agent.Journal, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, "journal.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var j agent.Journal
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, err
	}
	return &j, nil
}

// pollUntil calls cond every 20ms until it returns true or ctx ends.
func pollUntil(ctx context.Context, what string, cond func() bool) error {
	return pollEvery(ctx, 20*time.Millisecond, what, cond)
}

// pollEvery calls cond every d until it returns true or ctx ends.
func pollEvery(ctx context.Context, d time.Duration, what string, cond func() bool) error {
	tick := time.NewTicker(d)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// journalAtWith polls node's journal until ok holds.
func (f *Fleet) journalAtWith(ctx context.Context, node string, ok func(*agent.Journal) bool) (*agent.Journal, error) {
	var got *agent.Journal
	err := pollUntil(ctx, node+"'s journal", func() bool {
		j, err := readJournal(f.Upgrader(node).StateDir)
		if err == nil && j != nil && ok(j) {
			got = j
			return true
		}
		return false
	})
	return got, err
}

// statusWhere polls the status records (through store) until one of nodes matches ok; it returns that
// node's record.
func statusWhere(ctx context.Context, store *rollout.Store, nodes []string, ok func(rollout.NodeStatus) bool) (rollout.NodeStatus, error) {
	var got rollout.NodeStatus
	err := pollUntil(ctx, fmt.Sprintf("a status record of %v", nodes), func() bool {
		for _, n := range nodes {
			s, found, err := store.GetNodeStatus(ctx, n)
			if err == nil && found && ok(s) {
				got = s
				return true
			}
		}
		return false
	})
	return got, err
}

// setPause points node's test-only pause hook (agent/hook.go) at content ("" removes it).
func (f *Fleet) setPause(t *testing.T, node, content string) {
	t.Helper()
	p := filepath.Join(f.Upgrader(node).StateDir, agent.PauseFile)
	if content == "" {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		return
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// upgraderLogHas reports whether node's upgrader log contains s.
func (f *Fleet) upgraderLogHas(node, s string) bool {
	b, err := os.ReadFile(f.Upgrader(node).LogPath)
	return err == nil && strings.Contains(string(b), s)
}

// upgraderLogLines returns the lines of node's upgrader log that contain any of subs.
func (f *Fleet) upgraderLogLines(node string, subs ...string) []string {
	b, err := os.ReadFile(f.Upgrader(node).LogPath)
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		for _, s := range subs {
			if strings.Contains(line, s) {
				out = append(out, line)
				break
			}
		}
	}
	return out
}

// agentPid is the pid of node's Consul agent, from the pid file its upgrader keeps.
func (f *Fleet) agentPid(node string) (int, error) {
	b, err := os.ReadFile(filepath.Join(f.Upgrader(node).StateDir, "agent.pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(firstLine(string(b))))
}

// processGone reports whether pid has exited (gone, or a zombie nobody has reaped yet).
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// "pid (comm) S ...": the state follows the last ')'.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z' || s[i+2] == 'X'
	}
	return false
}

// serverNames lists the fleet's servers.
func serverNames(f *Fleet) []string {
	var out []string
	for _, n := range f.Cluster.Servers() {
		out = append(out, n.Name)
	}
	return out
}

// brokenRelease writes a stand-in for consul 1.16.1 that answers `version` (and anything else) exactly
// like the real 1.16.1 but, started as `agent`, prints an error and exits 3 after a moment: a release
// that starts and never joins the cluster (FAULTS F3).
func brokenRelease(t *testing.T) string {
	t.Helper()
	real := testbin.Require(t, "1.16.1")
	p := filepath.Join(t.TempDir(), "consul")
	script := fmt.Sprintf(`#!/bin/sh
# F3 test stand-in: a consul 1.16.1 release that never becomes healthy.
if [ "$1" = "agent" ]; then
  echo "==> broken release: refusing to start the agent" >&2
  sleep 1
  exit 3
fi
exec %q "$@"
`, real)
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// startMonitor runs a Monitor through the unmanaged node via until the test ends (or stop is called).
func startMonitor(ctx context.Context, f *Fleet, via string) (*Monitor, func()) {
	mon := NewMonitor(f.Cluster, f.Cluster.Node(via), rollout.ServerLockPrefix(rollout.DefaultPrefix, "consul")+".lock")
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { mon.Run(mctx); close(done) }()
	var once sync.Once
	return mon, func() { once.Do(func() { cancel(); <-done }) }
}

// startWatcher runs w until stop is called.
func startWatcher(ctx context.Context, w *watcher) func() {
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { w.run(wctx); close(done) }()
	var once sync.Once
	return func() { once.Do(func() { cancel(); <-done }) }
}
