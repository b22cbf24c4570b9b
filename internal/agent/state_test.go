package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/upgrader-dev/upgrader/internal/health"
	"github.com/upgrader-dev/upgrader/internal/rollout"
)

// These tests drive the state machine through fakes (fakes_test.go) to pin down the order of its
// effects. The proofs on real Consul processes are in internal/fleet (faults_test.go).

func TestUpgrade_Scenarios(t *testing.T) {
	cases := []struct {
		name  string
		setup func(w *world)
		// until says when the scenario has played out.
		until func(w *world) bool
		check func(t *testing.T, w *world, ev []string)
	}{
		{
			name:  "happy path: swap, restart, confirm, then release",
			until: func(w *world) bool { return w.status.State == rollout.StateDone },
			check: func(t *testing.T, w *world, ev []string) {
				wantOrder(t, ev, "acquire", "swap 1.16.0 -> 1.16.1", "restart on 1.16.1", "release")
				if j, err := loadJournal(w.dir); err != nil || j != nil {
					t.Fatalf("journal left behind: %+v, %v", j, err)
				}
			},
		},
		{
			name: "lock lost before the swap stops safely and starts over",
			setup: func(w *world) {
				lostOnce := false
				w.onStatus = func(w *world, s rollout.NodeStatus) {
					if s.State == rollout.StateLocked && !lostOnce {
						lostOnce = true
						w.loseLock()
					}
				}
			},
			until: func(w *world) bool { return w.status.State == rollout.StateDone },
			check: func(t *testing.T, w *world, ev []string) {
				lost := indexOf(ev, "lock lost by", 0)
				next := indexOf(ev, "acquire", lost)
				if lost < 0 || next < 0 {
					t.Fatalf("expected a loss and a second acquisition: %v", ev)
				}
				if i := indexOf(ev, "swap", 0); i < next {
					t.Fatalf("swapped at event %d although the lock was lost at %d and re-taken only at %d: %v", i, lost, next, ev)
				}
				found := false
				for _, s := range w.statuses {
					found = found || (s.State == rollout.StateWaiting && strings.Contains(s.Step, "lock lost before the swap"))
				}
				if !found {
					t.Fatal("no status record said the lock was lost before the swap")
				}
			},
		},
		{
			name: "lock lost between the swap and the restart: old binary back, no restart",
			setup: func(w *world) {
				lostOnce := false
				w.onStatus = func(w *world, s rollout.NodeStatus) {
					if s.State == rollout.StateRestarting && !lostOnce {
						lostOnce = true
						w.loseLock()
					}
				}
			},
			until: func(w *world) bool { return w.status.State == rollout.StateDone },
			check: func(t *testing.T, w *world, ev []string) {
				lost := indexOf(ev, "lock lost by", 0)
				if lost < 0 {
					t.Fatalf("the lock was never lost: %v", ev)
				}
				first := indexOf(ev, "restart on", 0)
				again := indexOf(ev, "acquire", lost)
				if first >= 0 && first < again {
					t.Fatalf("restarted at event %d without the lock (lost at %d, re-taken at %d): %v", first, lost, again, ev)
				}
				found := false
				for _, s := range w.statuses {
					found = found || strings.Contains(s.Step, "old binary put back, nothing restarted")
				}
				if !found {
					t.Fatal("no status record said the old binary was put back")
				}
			},
		},
		{
			name: "a target change during confirmation does not interrupt it",
			setup: func(w *world) {
				w.onRestart = func(w *world) { w.setTarget("9.9.9") }
			},
			until: func(w *world) bool { return w.outcomes["c1"].State != "" && w.holder == "" },
			check: func(t *testing.T, w *world, ev []string) {
				if o := w.outcomes["c1"]; o.State != rollout.StateDone || o.To != "1.16.1" {
					t.Fatalf("outcome = %+v, want done -> 1.16.1", o)
				}
				wantOrder(t, ev, "restart on 1.16.1", "target 9.9.9", "release")
				if n := countPrefix(ev, "restore"); n != 0 {
					t.Fatalf("rolled back %d times: %v", n, ev)
				}
			},
		},
		{
			name:  "a release that never gets healthy rolls back, halts, and releases only after health on the old version",
			setup: func(w *world) { w.broken["1.16.1"] = true },
			until: func(w *world) bool { return w.status.State == rollout.StateFailed && w.holder == "" },
			check: func(t *testing.T, w *world, ev []string) {
				wantOrder(t, ev, "acquire", "swap", "restart on 1.16.1", "halt by c1", "restore 1.16.0", "restart on 1.16.0", "release")
				if w.liveVersion() != "1.16.0" || w.running != "1.16.0" {
					t.Fatalf("live %s, running %s; want 1.16.0", w.liveVersion(), w.running)
				}
				wantStatus(t, w, rollout.StateFailed, "rolled back")
				if !strings.Contains(w.status.LastError, "confirm") {
					t.Fatalf("last error %q does not name the failed gate", w.status.LastError)
				}
				if w.control.State != rollout.Halted || w.control.HaltedBy != "c1" {
					t.Fatalf("control = %+v", w.control)
				}
			},
		},
		{
			name: "the lock is kept until the halt is written",
			setup: func(w *world) {
				w.broken["1.16.1"] = true
				w.haltFails = 3
			},
			until: func(w *world) bool { return w.status.State == rollout.StateFailed && w.holder == "" },
			check: func(t *testing.T, w *world, ev []string) {
				wantOrder(t, ev, "halt failed", "restore 1.16.0", "halt failed", "halt by c1", "release")
			},
		},
		{
			name: "a rollback that cannot get healthy either is bounded, halts, then releases",
			setup: func(w *world) {
				w.broken["1.16.1"] = true
				w.broken["1.16.0"] = true
			},
			until: func(w *world) bool { return w.status.State == rollout.StateFailed && w.holder == "" },
			check: func(t *testing.T, w *world, ev []string) {
				wantOrder(t, ev, "halt by c1", "restore 1.16.0", "restart on 1.16.0", "release")
				if !strings.Contains(w.status.LastError, "rollback to 1.16.0 also failed") {
					t.Fatalf("last error %q", w.status.LastError)
				}
			},
		},
		{
			name: "a halt seen while waiting for the lock stops the wait before the lock is taken",
			setup: func(w *world) {
				w.hold("other")
				w.onStatus = func(w *world, s rollout.NodeStatus) {
					if s.Step == "waiting for the lock" {
						go func() {
							time.Sleep(20 * time.Millisecond)
							w.setControl(rollout.Control{State: rollout.Halted, HaltedBy: "s9"})
							time.Sleep(20 * time.Millisecond)
							w.free()
						}()
					}
				}
			},
			until: func(w *world) bool {
				return w.holder == "" && w.status.State == rollout.StateBlocked && strings.Contains(w.status.Step, "halted")
			},
			check: func(t *testing.T, w *world, ev []string) {
				if i := indexOf(ev, "acquire", 0); i >= 0 {
					t.Fatalf("took the lock although the rollout was halted: %v", ev)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			defer goleak.VerifyNone(t)
			w := newWorld(t, "1.16.0", "1.16.1")
			if tc.setup != nil {
				tc.setup(w)
			}
			stop := start(t, w.newAgent(t, nil))
			w.waitFor(tc.name, tc.until)
			// Let a few more loop rounds run: the outcome must be stable, not a passing moment.
			time.Sleep(50 * time.Millisecond)
			stop()
			w.mu.Lock()
			defer w.mu.Unlock()
			tc.check(t, w, w.events)
		})
	}
}

// TestUpgrade_FailedStaysFailed: after a failure the node's record says failed (with the cause) while
// the halt it caused blocks the rollout, also across a restart of the upgrader.
func TestUpgrade_FailedStaysFailed(t *testing.T) {
	defer goleak.VerifyNone(t)
	w := newWorld(t, "1.16.0", "1.16.1")
	w.broken["1.16.1"] = true
	stop := start(t, w.newAgent(t, nil))
	w.waitFor("failed", func(w *world) bool { return w.status.State == rollout.StateFailed && w.holder == "" })
	time.Sleep(50 * time.Millisecond)
	stop()
	wantStatus(t, w, rollout.StateFailed, "rolled back")

	stop = start(t, w.newAgent(t, nil))
	time.Sleep(100 * time.Millisecond)
	stop()
	wantStatus(t, w, rollout.StateFailed, "rolled back")
}

// TestShutdownMidUpgrade_Resumes: cancelling the agent's context mid-upgrade leaves the journal and the
// lock's session; the next start re-enters that session and finishes without restarting twice.
func TestShutdownMidUpgrade_Resumes(t *testing.T) {
	cases := []struct {
		name      string
		at        func(w *world, cancel func())
		wantStep  Step
		restarts  int // total restarts after the resumed run
		wantState rollout.NodeState
	}{
		{
			name: "during the restart",
			at: func(w *world, cancel func()) {
				w.onRestart = func(*world) { cancel() }
			},
			wantStep: StepConfirming, restarts: 1, wantState: rollout.StateDone,
		},
		{
			name: "during confirmation",
			at: func(w *world, cancel func()) {
				w.onObserve = func(w *world, running string) {
					if running == "1.16.1" {
						cancel()
					}
				}
			},
			wantStep: StepConfirming, restarts: 1, wantState: rollout.StateDone,
		},
		{
			name: "during the rollback's confirmation",
			at: func(w *world, cancel func()) {
				w.broken["1.16.1"] = true
				w.onObserve = func(w *world, running string) {
					if running == "1.16.0" && w.liveVersion() == "1.16.0" && w.restarts == 2 {
						cancel()
					}
				}
			},
			wantStep: StepRollingBack, restarts: 2, wantState: rollout.StateFailed,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			defer goleak.VerifyNone(t)
			w := newWorld(t, "1.16.0", "1.16.1")
			a := w.newAgent(t, nil)
			ctx, cancel := context.WithCancel(context.Background())
			tc.at(w, cancel)
			if err := a.Run(ctx); err != nil {
				t.Fatal(err)
			}
			w.onObserve, w.onRestart = nil, nil
			j, err := loadJournal(w.dir)
			if err != nil || j == nil {
				t.Fatalf("journal after shutdown: %v, %v", j, err)
			}
			if j.Step != tc.wantStep {
				t.Fatalf("journal step %s, want %s", j.Step, tc.wantStep)
			}
			w.mu.Lock()
			holder := w.holder
			w.mu.Unlock()
			if holder == "" || holder != j.SessionID {
				t.Fatalf("lock holder %q, journaled session %q: the session must be kept for the next start", holder, j.SessionID)
			}

			stop := start(t, w.newAgent(t, nil))
			w.waitFor("resumed upgrade to end", func(w *world) bool { return w.status.State == tc.wantState && w.holder == "" })
			stop()
			ev := w.Events()
			if indexOf(ev, "re-enter "+j.SessionID, 0) < 0 {
				t.Fatalf("the journaled session %s was not re-entered: %v", j.SessionID, ev)
			}
			if w.restarts != tc.restarts {
				t.Fatalf("%d restarts, want %d: %v", w.restarts, tc.restarts, ev)
			}
		})
	}
}

// TestResume: what a restarted upgrader does for each journaled step.
func TestResume(t *testing.T) {
	cases := []struct {
		name string
		// journal and world before the resume
		step         Step
		stagedLeft   bool   // the staged file is still there (the rename never happened)
		swapped      bool   // the live binary is the new one
		running      string // what the agent runs
		sessionAlive bool   // the journaled session still holds the slot
		noRollback   bool   // the journal lost the rollback path
		broken       bool   // the new version never gets healthy

		wantEvents []string // in this order
		notEvents  []string
		wantState  rollout.NodeState
		wantLive   string
	}{
		{name: "locked: give the slot back, change nothing", step: StepLocked, running: "1.16.0", sessionAlive: true,
			wantEvents: []string{"re-enter s0", "release s0"}, notEvents: []string{"swap", "restart"}, wantLive: "1.16.0"},
		{name: "locked with an expired session: nothing held, nothing changed", step: StepLocked, running: "1.16.0",
			notEvents: []string{"swap", "restart", "re-enter"}, wantLive: "1.16.0"},
		{name: "swapped but the rename never happened: same as locked", step: StepSwapped, stagedLeft: true, running: "1.16.0", sessionAlive: true,
			wantEvents: []string{"re-enter s0", "release s0"}, notEvents: []string{"swap", "restart"}, wantLive: "1.16.0"},
		{name: "swapped, agent still on the old version: restart once, confirm", step: StepSwapped, swapped: true, running: "1.16.0", sessionAlive: true,
			wantEvents: []string{"re-enter s0", "restart on 1.16.1", "release s0"}, wantState: rollout.StateDone, wantLive: "1.16.1"},
		{name: "swapped, agent already on the new version (crash during the restart): no second restart", step: StepSwapped, swapped: true, running: "1.16.1", sessionAlive: true,
			wantEvents: []string{"re-enter s0", "release s0"}, notEvents: []string{"restart"}, wantState: rollout.StateDone, wantLive: "1.16.1"},
		{name: "confirming with an expired session: a new one, no restart", step: StepConfirming, swapped: true, running: "1.16.1",
			wantEvents: []string{"acquire s1", "release s1"}, notEvents: []string{"restart", "re-enter"}, wantState: rollout.StateDone, wantLive: "1.16.1"},
		{name: "swapped, rollback path lost in the crash, new version broken: rolls back with the derived path", step: StepSwapped, swapped: true, running: "1.16.0", sessionAlive: true, noRollback: true, broken: true,
			wantEvents: []string{"re-enter s0", "restart on 1.16.1", "halt by c1", "restore 1.16.0", "restart on 1.16.0", "release s0"}, wantState: rollout.StateFailed, wantLive: "1.16.0"},
		{name: "rolling back, already restarted on the old version: no second restart", step: StepRollingBack, swapped: true, running: "1.16.0", sessionAlive: true,
			wantEvents: []string{"re-enter s0", "halt by c1", "restore 1.16.0", "release s0"}, notEvents: []string{"restart"}, wantState: rollout.StateFailed, wantLive: "1.16.0"},
		{name: "rolling back, agent still on the new version: restore and restart", step: StepRollingBack, swapped: true, running: "1.16.1", sessionAlive: true,
			wantEvents: []string{"re-enter s0", "restore 1.16.0", "restart on 1.16.0", "release s0"}, wantState: rollout.StateFailed, wantLive: "1.16.0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			defer goleak.VerifyNone(t)
			w := newWorld(t, "1.16.0", "1.16.1")
			w.broken["1.16.1"] = tc.broken
			rel, err := fakeFetcher{w}.Fetch(context.Background(), "consul", "1.16.1", "", "")
			if err != nil {
				t.Fatal(err)
			}
			staged, err := w.bin.Stage(rel.BinaryPath, "1.16.1")
			if err != nil {
				t.Fatal(err)
			}
			j := &Journal{Target: "1.16.1", From: "1.16.0", Step: tc.step, StagedPath: staged, SessionID: "s0",
				LockPrefix: "upgrader/consul/lock/clients/", LockLimit: 1, Baseline: baselineFor("1.16.1")}
			if tc.swapped {
				if j.RollbackPath, err = w.bin.Swap(staged, "1.16.0"); err != nil {
					t.Fatal(err)
				}
			}
			if tc.noRollback {
				j.RollbackPath = ""
			}
			if tc.step == StepRollingBack {
				j.Error = "health: confirm gate did not pass"
			}
			if err := saveJournal(w.dir, j, time.Now()); err != nil {
				t.Fatal(err)
			}
			w.running = tc.running
			if tc.sessionAlive {
				w.hold("s0")
				w.lost["s0"] = make(chan struct{})
			}

			a := w.newAgent(t, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := a.resume(ctx); err != nil {
				t.Fatal(err)
			}
			ev := w.Events()
			wantOrder(t, ev, tc.wantEvents...)
			for _, n := range tc.notEvents {
				if i := indexOf(ev, n, 0); i >= 0 {
					t.Errorf("unexpected event %q: %v", ev[i], ev)
				}
			}
			if tc.wantState != "" {
				wantStatus(t, w, tc.wantState, "")
			}
			if got := w.liveVersion(); got != tc.wantLive {
				t.Errorf("live binary %s, want %s", got, tc.wantLive)
			}
			if j, _ := loadJournal(w.dir); j != nil {
				t.Errorf("journal left behind at step %s", j.Step)
			}
			if w.holder != "" {
				t.Errorf("lock still held by %s", w.holder)
			}
		})
	}
}

func TestPauseFor(t *testing.T) {
	cases := []struct {
		content string
		step    Step
		want    time.Duration
		ok      bool
	}{
		{"", StepLocked, 0, false},
		{"locked\n", StepLocked, defaultPause, true},
		{"swapped 3s\nlocked 250ms", StepLocked, 250 * time.Millisecond, true},
		{"swapped 3s", StepLocked, 0, false},
		{"locked nonsense", StepLocked, defaultPause, true},
		{"  confirming   2s  ", StepConfirming, 2 * time.Second, true},
	}
	for _, tc := range cases {
		got, ok := pauseFor(tc.content, tc.step)
		if got != tc.want || ok != tc.ok {
			t.Errorf("pauseFor(%q, %s) = %s, %v; want %s, %v", tc.content, tc.step, got, ok, tc.want, tc.ok)
		}
	}
}

func TestSwapMayHaveHappened(t *testing.T) {
	exists := func(p string) bool { return p == "present" }
	cases := []struct {
		j    Journal
		want bool
	}{
		{Journal{Step: StepLocked, StagedPath: "present"}, false},
		{Journal{Step: StepSwapped, StagedPath: "present"}, false},
		{Journal{Step: StepSwapped, StagedPath: "gone"}, true},
		{Journal{Step: StepSwapped}, true},
		{Journal{Step: StepConfirming, StagedPath: "present"}, true},
		{Journal{Step: StepRollingBack}, true},
	}
	for _, tc := range cases {
		if got := swapMayHaveHappened(&tc.j, exists); got != tc.want {
			t.Errorf("swapMayHaveHappened(%+v) = %v, want %v", tc.j, got, tc.want)
		}
	}
}

// wantOrder fails unless events contain each prefix in want, in that order.
func wantOrder(t *testing.T, events []string, want ...string) {
	t.Helper()
	at := 0
	for _, p := range want {
		i := indexOf(events, p, at)
		if i < 0 {
			t.Fatalf("no %q after event %d in %v (want in order: %v)", p, at, events, want)
		}
		at = i + 1
	}
}

func baselineFor(v string) health.Baseline { return health.Baseline{TargetVersion: v, Node: "c1"} }

func wantStatus(t *testing.T, w *world, state rollout.NodeState, step string) {
	t.Helper()
	if w.status.State != state || !strings.Contains(w.status.Step, step) {
		t.Fatalf("status %s %q, want %s %q (last error %q)", w.status.State, w.status.Step, state, step, w.status.LastError)
	}
}
