package fleet

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/upgrader-dev/upgrader/internal/agent"
	"github.com/upgrader-dev/upgrader/internal/rollout"
	"github.com/upgrader-dev/upgrader/internal/testbin"
)

// kill is one SIGKILL of an upgrader in TestF10_F14_KillUpgraderAtEachStep.
type kill struct {
	node, at string
	killed   time.Time
	restart  time.Time // zero while it stays dead
	session  string    // the journaled lock session, if any
}

// TestF10_F14_KillUpgraderAtEachStep SIGKILLs server upgraders (their Consul agents keep running, by
// design) at each step of one rollout, on one fleet:
//
//  1. after staging: the leader waits its turn with the release staged (restarted at once);
//  2. after locking: the first server to take the lock (journal "locked"), left dead until the lock has
//     come free on its own (F10: measured), then started again;
//  3. after swapping: the second server (journal "swapped", rollback copy recorded, agent not restarted);
//  4. during the restart: the first server again, on its second try (status "restarting");
//  5. during confirmation: the last server (status "confirming").
//
// The narrow steps are hit with the agent's test-only pause hook. Proven from outside: the rollout
// finishes with every server on 1.16.1; the monitor never sees two servers down or non-voting at once;
// every server restarts exactly once (a resumed upgrade never restarts an agent twice); at every sample
// every live binary is byte-for-byte the 1.16.0 or the 1.16.1 binary; the lock frees in bounded time
// when its holder stays dead, and is held continuously by a holder that is restarted at once. F4 is
// checked on the same rollout: the pre-upgrade snapshot is recorded, on disk, and older than the first
// server restart.
func TestF10_F14_KillUpgraderAtEachStep(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real Consul cluster")
	}
	t.Parallel()
	oldBin := testbin.Require(t, "1.16.0")
	newBin := testbin.Require(t, "1.16.1")
	// Inherited by every upgrader this test binary starts from now on; only nodes with a pause file
	// (state_dir/test-pause-at, written below) ever pause.
	if err := os.Setenv(agent.TestHooksEnv, "1"); err != nil {
		t.Fatal(err)
	}
	// Below go test's default 10m timeout, so that a hang fails the test with its cleanup and logs.
	ctx, cancel := context.WithTimeout(context.Background(), 7*time.Minute)
	defer cancel()

	f, err := Start(ctx, t, Options{Block: 33, Servers: 3, Clients: 1, Unmanaged: []string{"c1"}})
	if err != nil {
		t.Fatal(err)
	}
	mon, stopMon := startMonitor(ctx, f, "c1")
	defer stopMon()
	w := newWatcher(t, f, "c1", map[string]string{oldBin: "1.16.0", newBin: "1.16.1"})
	stopWatch := startWatcher(ctx, w)
	defer stopWatch()
	store, err := f.Store("c1")
	if err != nil {
		t.Fatal(err)
	}
	lockKey := rollout.ServerLockPrefix(rollout.DefaultPrefix, "consul") + ".lock"
	c1 := f.Cluster.Node("c1").API()
	servers := serverNames(f)
	for _, s := range servers {
		f.setPause(t, s, "locked 90s")
	}
	var kills []*kill
	killNode := func(node, at string, restartNow bool) *kill {
		t.Helper()
		k := &kill{node: node, at: at}
		if j, _ := readJournal(f.Upgrader(node).StateDir); j != nil {
			k.session = j.SessionID
		}
		k.killed = time.Now()
		f.KillUpgrader(node)
		t.Logf("killed %s's upgrader %s", node, at)
		if restartNow {
			f.setPause(t, node, "")
			k.restart = time.Now()
			if err := f.StartUpgrader(node); err != nil {
				t.Fatal(err)
			}
		}
		kills = append(kills, k)
		return k
	}

	start := time.Now()
	if _, err := store.SetTarget(ctx, rollout.Target{Version: "1.16.1", SetBy: "TestF10_F14"}); err != nil {
		t.Fatal(err)
	}

	// 1. After staging: the leader waits to go last, its release staged.
	st, err := statusWhere(ctx, store, servers, func(s rollout.NodeStatus) bool {
		return s.State == rollout.StateWaiting && strings.Contains(s.Step, "goes last")
	})
	if err != nil {
		t.Fatal(err)
	}
	leader := st.Node
	killNode(leader, "after staging (waiting to go last)", true)

	// 2. After locking: whichever follower takes the lock first stays dead until the lock frees itself.
	var first string
	err = pollUntil(ctx, "a server journaled at locked", func() bool {
		for _, s := range servers {
			if j, _ := readJournal(f.Upgrader(s).StateDir); j != nil && j.Step == agent.StepLocked && j.From != "" {
				first = s
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatal(err)
	}
	second := otherThan(servers, leader, first)
	f.setPause(t, second, "swapped 90s")
	f.setPause(t, leader, "")
	dead := killNode(first, "after locking", false)
	var freed time.Time
	err = pollUntil(ctx, "the dead holder's session to leave the lock", func() bool {
		pair, _, err := c1.KV().Get(lockKey, nil)
		if err != nil || pair == nil {
			return false
		}
		if !bytes.Contains(pair.Value, []byte(dead.session)) {
			freed = time.Now()
			return true
		}
		return false
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("F10: %s's upgrader died holding the lock (session %s); the lock named it no more %s later (lock ttl 10s, lock_delay 1s)",
		first, dead.session, freed.Sub(dead.killed).Round(time.Millisecond))

	// 3. After swapping: the second server, its binary swapped and its agent not restarted yet.
	if _, err := f.journalAtWith(ctx, second, func(j *agent.Journal) bool {
		return j.Step == agent.StepSwapped && j.RollbackPath != ""
	}); err != nil {
		t.Fatal(err)
	}
	killNode(second, "after swapping", true)

	// The first server comes back: its journal says locked, its session is gone.
	f.setPause(t, first, "")
	pid, err := f.agentPid(first)
	if err != nil {
		t.Fatal(err)
	}
	dead.restart = time.Now()
	if err := f.StartUpgrader(first); err != nil {
		t.Fatal(err)
	}

	// 4. During the restart: the first server, on its second try. Its Consul agent (pid from the pid file,
	// adopted by the upgrader just started) is watched every 2ms, and the upgrader is killed the moment
	// that agent has been stopped: between the stop and the start of the restart, or just after the start.
	sctx, scancel := context.WithTimeout(ctx, 3*time.Minute)
	defer scancel()
	if err := pollEvery(sctx, 2*time.Millisecond, first+"'s agent to be stopped for the restart", func() bool { return processGone(pid) }); err != nil {
		t.Fatal(err)
	}
	killNode(first, "during the restart", true)
	if st, _, err := store.GetNodeStatus(ctx, first); err == nil {
		t.Logf("%s's status right after its upgrader was killed: %s %q (its agent, pid %d, had stopped at most 2ms before)", first, st.State, st.Step, pid)
	}

	// 5. During confirmation: the last server. Its journal, not its status record: the status write right
	// after the leader's own restart can fail during the election (it is best effort), the journal cannot.
	last := otherThan(servers, first, second)
	if _, err := f.journalAtWith(ctx, last, func(j *agent.Journal) bool { return j.Step == agent.StepConfirming }); err != nil {
		t.Fatal(err)
	}
	killNode(last, "during confirmation", true)

	if err := f.WaitRolledOut(ctx, store, "1.16.1", t.Logf); err != nil {
		t.Fatal(err)
	}
	wall := time.Since(start)
	if err := sleepCtx(ctx, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	stopWatch()
	stopMon()
	t.Logf("rollout with 5 upgrader kills: %s", wall.Round(time.Millisecond))

	rep := mon.Report(start, time.Time{})
	t.Logf("monitor: %s", rep)
	if rep.MaxServersImpaired > 1 {
		t.Errorf("two or more servers were down or non-voting at once (max %d)", rep.MaxServersImpaired)
	}
	downs := map[string]int{}
	var firstDown time.Time
	for _, d := range rep.Downs {
		if !d.Server {
			continue
		}
		downs[d.Node]++
		if firstDown.IsZero() || d.From.Before(firstDown) {
			firstDown = d.From
		}
	}
	for _, s := range servers {
		if downs[s] != 1 {
			t.Errorf("server %s went down %d times, want exactly once (a resumed upgrade must not restart twice)", s, downs[s])
		}
	}
	n, changes := w.checkBinaries(t)
	t.Logf("watcher: %d samples, %d live-binary changes, every one a complete 1.16.0 or 1.16.1 binary", n, changes)

	// The lock across each kill: freed in bounded time when the holder stayed dead; held throughout,
	// from the kill until the node reported done, when it came back at once.
	samples := w.all()
	for _, k := range kills {
		holds, seen := 0, 0
		var done time.Time
		for _, s := range samples {
			if s.At.Before(k.killed) {
				continue
			}
			if st := s.Status[k.node]; st.State == rollout.StateDone && st.Target == "1.16.1" {
				done = s.At
				break
			}
			if s.LockKnown {
				seen++
				if slices.Contains(s.Holders, k.node) {
					holds++
				}
			}
		}
		switch {
		case k.at == "after locking":
			t.Logf("%s killed %s and left dead: lock free %s after the kill", k.node, k.at, freed.Sub(k.killed).Round(time.Millisecond))
		case k.session == "":
			t.Logf("%s killed %s: held no lock; done %s after the kill", k.node, k.at, done.Sub(k.killed).Round(time.Millisecond))
		default:
			t.Logf("%s killed %s, restarted at once: the lock named it in %d of %d lock samples until it was done, %s after the kill",
				k.node, k.at, holds, seen, done.Sub(k.killed).Round(time.Millisecond))
			if holds != seen || done.IsZero() {
				t.Errorf("%s killed %s and restarted at once: the lock named it in only %d of %d samples before it was done (%s)", k.node, k.at, holds, seen, done)
			}
		}
	}
	for _, s := range servers {
		t.Logf("%s's upgrader, resume and restart lines:\n%s", s, strings.Join(f.upgraderLogLines(s,
			"found an upgrade in flight", "adopted", "already runs", "does not run the target", "re-entered",
			"resumed", "giving back", "nothing to give back", "journaled session", "TEST HOOK", "exec: started",
			"upgrader agent running", "state=done", "lock acquired"), "\n"))
		if j, _ := readJournal(f.Upgrader(s).StateDir); j != nil {
			t.Errorf("%s: journal left at step %s", s, j.Step)
		}
		if !f.upgraderLogHas(s, "found an upgrade in flight") && (s == first || s == second || s == last) {
			t.Errorf("%s: its restarted upgrader never resumed from its journal", s)
		}
	}

	// F4 on the same rollout: the snapshot taken before the first server restarted.
	t.Run("F4_SnapshotBeforeFirstServer", func(t *testing.T) { checkSnapshot(ctx, t, f, store, first, firstDown) })
}

// checkSnapshot is F4: the rollout record names a snapshot on the first lock holder's disk, written
// before the first server of the rollout went down.
func checkSnapshot(ctx context.Context, t *testing.T, f *Fleet, store *rollout.Store, firstHolder string, firstDown time.Time) {
	t.Helper()
	ro, err := store.ReadRollout(ctx)
	if err != nil {
		t.Fatal(err)
	}
	snap := ro.Snapshot
	if snap == nil {
		t.Fatalf("rollout %s records no snapshot", ro.ID)
	}
	if snap.Node != firstHolder {
		t.Errorf("snapshot taken on %s, want %s (the first server to take the lock)", snap.Node, firstHolder)
	}
	u := f.Upgrader(snap.Node)
	if u == nil || !strings.HasPrefix(snap.Path, u.StateDir+string(filepath.Separator)) {
		t.Fatalf("snapshot path %s is not in %s's state dir", snap.Path, snap.Node)
	}
	fi, err := os.Stat(snap.Path)
	if err != nil {
		t.Fatalf("snapshot file: %v", err)
	}
	head := make([]byte, 2)
	if fh, err := os.Open(snap.Path); err == nil {
		_, _ = fh.Read(head)
		fh.Close()
	}
	if fi.Size() == 0 || head[0] != 0x1f || head[1] != 0x8b {
		t.Errorf("snapshot %s: %d bytes, starts %x; want a non-empty gzip stream (Consul's snapshot format)", snap.Path, fi.Size(), head)
	}
	if firstDown.IsZero() || !fi.ModTime().Before(firstDown) {
		t.Errorf("snapshot written at %s, not before the first server went down (%s)", fi.ModTime().Format("15:04:05.000"), firstDown.Format("15:04:05.000"))
	}
	t.Logf("F4: rollout %s snapshot %s on %s: %d bytes, written %s before the first server went down (recorded at %s)",
		ro.ID, filepath.Base(snap.Path), snap.Node, fi.Size(), firstDown.Sub(fi.ModTime()).Round(time.Millisecond), snap.At.Format("15:04:05.000"))
}

// otherThan returns the one name in all that is not in not.
func otherThan(all []string, not ...string) string {
	for _, s := range all {
		if !slices.Contains(not, s) {
			return s
		}
	}
	return ""
}
