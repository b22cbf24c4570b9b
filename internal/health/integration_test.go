package health

import (
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/upgrader-dev/upgrader/internal/testcluster"
)

// Real-Consul tests of this package use the loopback block 127.0.12.x.
const testBlock = 12

var captureDir = flag.String("health.capture", "", "write the observations of the integration tests as golden cases into this directory")

// The integration test uses a short stabilization window: long enough to see a flapping gate, short
// enough for 2 CPUs. Production windows are longer.
const (
	testWindow   = 3 * time.Second
	testInterval = 250 * time.Millisecond
)

type itEnv struct {
	t      *testing.T
	c      *testcluster.Cluster
	dialer *Dialer
}

func (e *itEnv) observeFrom(n *testcluster.Node) ObserveFunc {
	return func(ctx context.Context) (Observation, error) {
		return Observe(ctx, ObserveInput{
			Local:       FromClient(n.API()),
			Dial:        e.dialer.Dial,
			ProbeKey:    "upgrader/consul/probe/" + n.Name,
			CallTimeout: 2 * time.Second,
		})
	}
}

// capture saves an observation and the gate input it was judged with as a golden case.
func (e *itEnv) capture(name string, obs Observation, in goldenInput) {
	if *captureDir == "" {
		return
	}
	dir := filepath.Join(*captureDir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Errorf("capture: %v", err)
		return
	}
	in.Now = obs.At
	for file, v := range map[string]interface{}{"observation.json": obs, "input.json": in} {
		b, _ := json.MarshalIndent(v, "", "  ")
		if err := os.WriteFile(filepath.Join(dir, file), append(b, '\n'), 0o644); err != nil {
			e.t.Errorf("capture: %v", err)
		}
	}
}

func leaderNode(t *testing.T, ctx context.Context, c *testcluster.Cluster) *testcluster.Node {
	t.Helper()
	n, err := c.Leader(ctx)
	if err != nil {
		t.Fatalf("leader: %v", err)
	}
	return n
}

func followers(t *testing.T, ctx context.Context, c *testcluster.Cluster) []*testcluster.Node {
	leader := leaderNode(t, ctx, c)
	var out []*testcluster.Node
	for _, s := range c.Servers() {
		if s.Name != leader.Name {
			out = append(out, s)
		}
	}
	return out
}

func logReport(t *testing.T, what string, rep ConfirmReport, answeredAfter time.Duration) {
	t.Helper()
	t.Logf("%s: agent answered %s after the stop began; gate held for %s after %s (%d samples, %d failing)",
		what, answeredAfter.Round(time.Millisecond), testWindow, rep.Elapsed.Round(time.Millisecond), rep.Samples, rep.Failed)
	if !rep.PassingSince.IsZero() && !rep.FirstAnswer.IsZero() {
		t.Logf("%s: first passing sample of the final streak came %s after the first answer",
			what, rep.PassingSince.Sub(rep.FirstAnswer).Round(time.Millisecond))
	}
	for _, r := range rep.SeenReasons() {
		t.Logf("%s: reason seen on the way: %s", what, r)
	}
}

// TestF1_F6_HealthGates runs the gates against one real 3-server + 1-client cluster, in order:
// preflight on a healthy cluster, a quick follower restart confirmed (the 'Seen on 1.16.1' case),
// a stopped server (F6, then failure tolerance), a slow restart that rejoins as a non-voter (F1), and a
// client restart.
func TestF1_F6_HealthGates(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real Consul processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c := testcluster.New(t, testcluster.Options{Block: testBlock, Servers: 3, Clients: 1})
	if err := c.Start(ctx); err != nil {
		t.Fatalf("start: %v", err)
	}
	e := &itEnv{t: t, c: c, dialer: NewDialer(&api.Config{Scheme: "http"})}
	t.Cleanup(e.dialer.Close)

	version, err := c.Servers()[0].Version(ctx)
	if err != nil {
		t.Fatalf("version: %v", err)
	}
	base := Baseline{Servers: 3, TargetVersion: version}

	t.Run("healthy cluster passes preflight", func(t *testing.T) {
		for _, n := range c.Nodes() {
			obs, err := e.observeFrom(n)(ctx)
			if err != nil {
				t.Fatalf("observe %s: %v", n.Name, err)
			}
			v := Preflight(obs, Policy{})
			if !v.Pass {
				// Start waits for a healthy cluster, but give autopilot one refresh before judging.
				t.Logf("%s: first preflight sample failed: %q; waiting", n.Name, v.Reasons)
				wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
				obs, v, err = WaitUntil(wctx, e.observeFrom(n), PreflightGate(Policy{}), testInterval, WithName("preflight"), WithLogger(testLogger(t)))
				wcancel()
				if err != nil {
					t.Fatalf("%s: preflight never passed on a healthy cluster: %v", n.Name, err)
				}
			}
			if len(v.Reasons) != 0 {
				t.Errorf("%s: passing preflight with reasons %q", n.Name, v.Reasons)
			}
			if n.IsServer() {
				if obs.Autopilot == nil || obs.Autopilot.FailureTolerance < 1 || len(obs.ServerLeaders) != 3 {
					t.Fatalf("%s: observation %+v", n.Name, obs)
				}
				base.FailureTolerance = obs.Autopilot.FailureTolerance
				e.capture("real-healthy-"+n.Name, obs, goldenInput{Gate: "preflight"})
			} else {
				e.capture("real-healthy-client", obs, goldenInput{Gate: "preflight"})
			}
			t.Logf("%s: preflight passes; leader %s, failure tolerance %v, probe %v", n.Name, obs.LocalLeader,
				ftOf(obs), probeOf(obs))
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("quick follower restart is confirmed from the server's own stats", func(t *testing.T) {
		f := followers(t, ctx, c)[0]
		b := base
		b.Node = f.Name
		before, err := e.observeFrom(f)(ctx)
		if err != nil {
			t.Fatal(err)
		}
		stop := time.Now()
		if err := f.Restart(ctx); err != nil {
			t.Fatalf("restart %s: %v", f.Name, err)
		}
		answered := time.Since(stop)
		first, firstErr := e.observeFrom(f)(ctx)
		if firstErr == nil {
			v := ServerConfirm(first, b, first.At)
			t.Logf("%s: first sample after it answered: pass=%v reasons=%q", f.Name, v.Pass, v.Reasons)
			e.capture("real-quick-restart-first-sample", first, goldenInput{Gate: "server-confirm", Baseline: b})
			logAutopilotBlindness(t, f.Name, before, first)
		}
		cctx, ccancel := context.WithTimeout(ctx, 90*time.Second)
		defer ccancel()
		rep, err := Confirm(cctx, e.observeFrom(f), ServerConfirmGate(b), testWindow, testInterval, SystemClock{},
			WithName("server-confirm"), WithLogger(testLogger(t)), WithLogEvery(2*time.Second))
		if err != nil {
			t.Fatalf("confirm after a quick restart of %s: %v; seen %q", f.Name, err, rep.SeenReasons())
		}
		logReport(t, "quick restart of "+f.Name, rep, answered)
	})
	if t.Failed() {
		t.FailNow()
	}

	// One follower goes down and stays down for the next two subtests.
	g := followers(t, ctx, c)[1]
	var watcher *testcluster.Node
	for _, s := range c.Servers() {
		if s.Name != g.Name {
			watcher = s
			break
		}
	}
	stopped := time.Now()
	if err := g.Stop(ctx); err != nil {
		t.Fatalf("stop %s: %v", g.Name, err)
	}

	t.Run("F6 a stopped server breaks agreement though the others report a leader", func(t *testing.T) {
		obs, err := e.observeFrom(watcher)(ctx)
		if err != nil {
			t.Fatal(err)
		}
		leaders := map[string]bool{}
		for _, sl := range obs.ServerLeaders {
			switch {
			case sl.Node == g.Name && sl.Error == "":
				t.Errorf("stopped server %s answered: %+v", g.Name, sl)
			case sl.Node != g.Name && (sl.Error != "" || sl.Leader == ""):
				t.Errorf("running server %s has no leader: %+v", sl.Node, sl)
			case sl.Node != g.Name:
				leaders[sl.Leader] = true
			}
		}
		if len(leaders) != 1 {
			t.Errorf("running servers do not agree on one leader: %+v", obs.ServerLeaders)
		}
		pre := Preflight(obs, Policy{})
		wb := base
		wb.Node = watcher.Name
		conf := ServerConfirm(obs, wb, obs.At)
		t.Logf("%.0fms after stopping %s, from %s: preflight %q; server-confirm %q; autopilot healthy=%v ft=%v",
			float64(time.Since(stopped).Milliseconds()), g.Name, watcher.Name, pre.Reasons, conf.Reasons, obs.Autopilot != nil && obs.Autopilot.Healthy, ftOf(obs))
		for _, v := range []Verdict{pre, conf} {
			if v.Pass || !containsReason(v.Reasons, "server "+g.Name+" did not answer who the leader is") {
				t.Errorf("verdict %+v does not name the stopped server %s", v, g.Name)
			}
		}
		e.capture("real-f6-server-stopped", obs, goldenInput{Gate: "server-confirm", Baseline: wb})
	})

	t.Run("one server down: preflight names the failure tolerance", func(t *testing.T) {
		deadline := time.Now().Add(60 * time.Second)
		var last Verdict
		var obs Observation
		seen := map[string]bool{}
		for time.Now().Before(deadline) {
			var err error
			obs, err = e.observeFrom(watcher)(ctx)
			if err != nil {
				t.Fatal(err)
			}
			last = Preflight(obs, Policy{})
			if last.Pass {
				t.Fatalf("preflight passed with %s down: %+v", g.Name, obs)
			}
			for _, r := range last.Reasons {
				if !seen[r] {
					seen[r] = true
					t.Logf("+%s: new reason: %s", time.Since(stopped).Round(time.Millisecond), r)
				}
			}
			if containsReason(last.Reasons, "failure tolerance is 0") {
				break
			}
			if err := sleep(ctx, SystemClock{}, testInterval); err != nil {
				t.Fatal(err)
			}
		}
		if !containsReason(last.Reasons, "failure tolerance is 0") {
			t.Fatalf("preflight never named the failure tolerance: %q", last.Reasons)
		}
		t.Logf("failure tolerance 0 seen %s after the stop", time.Since(stopped).Round(time.Millisecond))
		e.capture("real-one-server-down", obs, goldenInput{Gate: "preflight"})
	})

	t.Run("F1 slow restart rejoins as a non-voter and is confirmed only once promoted", func(t *testing.T) {
		// Wait (bounded) for autopilot's dead-server cleanup to take g out of the raft configuration,
		// which is what makes a slow restart come back as a non-voter.
		removed := false
		rctx, rcancel := context.WithTimeout(ctx, 60*time.Second)
		for !removed {
			obs, err := e.observeFrom(watcher)(rctx)
			if err == nil && obs.Raft != nil {
				removed = true
				for _, s := range obs.Raft.Servers {
					if s.Node == g.Name {
						removed = false
					}
				}
			}
			if removed || sleep(rctx, SystemClock{}, testInterval) != nil {
				break
			}
		}
		rcancel()
		t.Logf("%s removed from the raft configuration: %v (%s after the stop)", g.Name, removed, time.Since(stopped).Round(time.Millisecond))

		b := base
		b.Node = g.Name
		start := time.Now()
		if err := g.Start(ctx); err != nil {
			t.Fatalf("start %s: %v", g.Name, err)
		}
		answered := time.Since(stopped)
		t.Logf("%s answers %s after Start", g.Name, time.Since(start).Round(time.Millisecond))
		if first, err := e.observeFrom(g)(ctx); err == nil {
			v := ServerConfirm(first, b, first.At)
			t.Logf("%s: first sample after it answered: pass=%v reasons=%q", g.Name, v.Pass, v.Reasons)
			e.capture("real-slow-restart-first-sample", first, goldenInput{Gate: "server-confirm", Baseline: b})
			if removed && v.Pass {
				t.Errorf("a server removed from raft passed on its first sample back: %+v", first)
			}
		}
		cctx, ccancel := context.WithTimeout(ctx, 120*time.Second)
		defer ccancel()
		rep, err := Confirm(cctx, e.observeFrom(g), ServerConfirmGate(b), testWindow, testInterval, SystemClock{},
			WithName("server-confirm"), WithLogger(testLogger(t)), WithLogEvery(2*time.Second))
		if err != nil {
			t.Fatalf("confirm after a slow restart of %s: %v; seen %q", g.Name, err, rep.SeenReasons())
		}
		logReport(t, "slow restart of "+g.Name, rep, answered)
		sawNonVoter := false
		for r := range rep.Seen {
			if strings.Contains(r, "non-voter") {
				sawNonVoter = true
			}
		}
		t.Logf("non-voter stage seen by the gate: %v", sawNonVoter)
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("client restart is confirmed", func(t *testing.T) {
		cl := c.Clients()[0]
		b := base
		b.Node = cl.Name
		stop := time.Now()
		if err := cl.Restart(ctx); err != nil {
			t.Fatalf("restart %s: %v", cl.Name, err)
		}
		answered := time.Since(stop)
		observe := Observer(ObserveInput{Local: FromClient(cl.API()), CallTimeout: 2 * time.Second})
		cctx, ccancel := context.WithTimeout(ctx, 60*time.Second)
		defer ccancel()
		rep, err := Confirm(cctx, observe, ClientConfirmGate(b), testWindow, testInterval, SystemClock{},
			WithName("client-confirm"), WithLogger(testLogger(t)), WithLogEvery(2*time.Second))
		if err != nil {
			t.Fatalf("confirm client %s: %v", cl.Name, err)
		}
		logReport(t, "client restart of "+cl.Name, rep, answered)
	})
}

// logAutopilotBlindness logs whether autopilot noticed the quick restart at all (DESIGN.md's 'Seen on
// Consul 1.16.1' note): the server's StableSince and Healthy before the stop and right after it answered.
func logAutopilotBlindness(t *testing.T, node string, before, after Observation) {
	t.Helper()
	get := func(o Observation) (ServerHealth, bool) {
		if o.Autopilot == nil {
			return ServerHealth{}, false
		}
		return autopilotServer(o.Autopilot, node)
	}
	b, ok1 := get(before)
	a, ok2 := get(after)
	if !ok1 || !ok2 {
		t.Logf("%s: autopilot entry before=%v after=%v", node, ok1, ok2)
		return
	}
	t.Logf("%s: autopilot before the restart healthy=%v stable_since=%s ft=%v; right after it answered healthy=%v stable_since=%s ft=%v (unchanged stable_since: %v)",
		node, b.Healthy, b.StableSince.Format(time.RFC3339Nano), ftOf(before), a.Healthy, a.StableSince.Format(time.RFC3339Nano), ftOf(after), a.StableSince.Equal(b.StableSince))
	if after.Local.Raft != nil {
		t.Logf("%s: its own raft stats right after it answered: %+v", node, *after.Local.Raft)
	}
}

func ftOf(o Observation) interface{} {
	if o.Autopilot == nil {
		return "unknown (" + o.AutopilotError + ")"
	}
	return o.Autopilot.FailureTolerance
}

func probeOf(o Observation) interface{} {
	if o.Probe == nil {
		return "none"
	}
	if o.Probe.OK {
		return "ok in " + o.Probe.Duration.Round(time.Microsecond).String()
	}
	return o.Probe.Error
}
