package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/upgrader-dev/upgrader/internal/permission"
	"github.com/upgrader-dev/upgrader/internal/rollout"
)

// Address blocks of the ACL and TLS tests: 127.0.42.x (ACLs) and 127.0.43.x (HTTPS only).

// TestF5_ACLDefaultDeny (FAULTS F5): on a cluster with ACLs in default-deny mode, every upgrader runs with
// a token of the shipped jobs/acl/upgrader-agent.hcl and nothing more (plus a management token used only
// for /v1/snapshot). An upgrader whose token lacks one rule (operator read) refuses to start, names the
// rule, changes nothing and leaves its Consul agent running; with the right token it adopts that agent,
// and a full 3-server rollout 1.16.0 -> 1.16.1 succeeds without a single 403.
func TestF5_ACLDefaultDeny(t *testing.T) {
	ctx := e2e(t, 10*time.Minute)
	begin := time.Now()
	f, err := Start(ctx, t, Options{Block: 42, Servers: 3, ACL: true, SnapshotToken: true})
	if err != nil {
		t.Fatal(err)
	}
	up := time.Since(begin)
	const passed = "the token has every permission the agent needs"
	if err := waitCond(ctx, "every upgrader to pass its permission check", func() bool {
		for _, n := range f.Managed() {
			if !strings.Contains(logSince(f.Upgrader(n.Name), 0), passed) {
				return false
			}
		}
		return true
	}); err != nil {
		f.DumpUpgraderLogs(40)
		t.Fatal(err)
	}
	t.Logf("fleet up in %s; every upgrader passed the permission check %s after the fleet started (token created once the cluster was healthy)",
		up.Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))

	// 1. A token without operator read: a follower's upgrader must refuse to start and touch nothing. (A
	// follower, so that stopping it costs no election.)
	policy, err := ReadShippedPolicy()
	if err != nil {
		t.Fatal(err)
	}
	bad, err := f.CreateToken(ctx, "upgrader-no-operator", policyWithout(t, policy, "operator ="), "")
	if err != nil {
		t.Fatal(err)
	}
	followers, err := f.Cluster.Followers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	victim, other := followers[0].Name, followers[1].Name
	kv := f.Cluster.Node(other).API().KV()
	u := f.Upgrader(victim)
	f.StopUpgrader(victim, 30*time.Second) // stops its agent too
	status, _, err := kv.Get("upgrader/consul/nodes/"+victim, nil)
	if err != nil {
		t.Fatal(err)
	}
	off := logSize(u)
	if err := f.SetUpgraderToken(victim, bad); err != nil {
		t.Fatal(err)
	}
	refusedAt := time.Now()
	if err := f.StartUpgrader(victim); err != nil {
		t.Fatal(err)
	}
	select {
	case <-u.Exited():
	case <-ctx.Done():
		t.Fatal("the upgrader with a token lacking operator read did not exit")
	}
	out := logSince(u, off)
	t.Logf("refused in %s with exit code %d", time.Since(refusedAt).Round(time.Millisecond), u.ExitCode())
	if u.ExitCode() == 0 {
		t.Errorf("the upgrader exited 0 although its token lacks operator read")
	}
	// hclog quotes the value: missing_rule="operator = \"read\"".
	if want := "missing_rule=" + strconv.Quote(permission.RuleOperatorRead); !strings.Contains(out, want) || !strings.Contains(out, "refusing to start") {
		t.Errorf("the refusal does not name the rule (want %s):\n%s", want, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "refusing to start") || strings.Contains(line, "agent stopped") {
			t.Logf("upgrader %s: %s", victim, strings.TrimSpace(line))
		}
	}
	// Nothing touched: its status record, the probe key, the lock's anchor node; and its agent still runs.
	after, _, err := kv.Get("upgrader/consul/nodes/"+victim, nil)
	if err != nil {
		t.Fatal(err)
	}
	if modifyIndex(status) != modifyIndex(after) {
		t.Errorf("%s's status record changed (index %d -> %d) although its upgrader refused to start", victim, modifyIndex(status), modifyIndex(after))
	}
	if p, _, err := kv.Get("upgrader/consul/probe/"+victim, nil); err != nil || p != nil {
		t.Errorf("probe key written by a refused upgrader (err %v)", err)
	}
	if n, _, err := f.Cluster.Node(other).API().Catalog().Node("upgrader-anchor-"+victim, nil); err != nil || n != nil {
		t.Errorf("anchor node registered by a refused upgrader (err %v)", err)
	}
	if v, err := f.Cluster.Node(victim).Version(ctx); err != nil || v != "1.16.0" {
		t.Errorf("%s's agent does not answer after its upgrader refused to start: %q, %v", victim, v, err)
	}

	// 2. The right token: the restarted upgrader adopts the running agent and passes.
	off = logSize(u)
	if err := f.SetUpgraderToken(victim, f.AgentToken); err != nil {
		t.Fatal(err)
	}
	if err := f.StartUpgrader(victim); err != nil {
		t.Fatal(err)
	}
	if err := waitCond(ctx, victim+"'s upgrader to adopt its agent and pass", func() bool {
		out := logSince(u, off)
		return strings.Contains(out, "adopted a running agent") && strings.Contains(out, passed)
	}); err != nil {
		t.Fatal(err)
	}
	if err := f.Cluster.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}

	// 3. The rollout, with nothing but the shipped policy.
	offs := map[string]int64{}
	for _, n := range f.Managed() {
		offs[n.Name] = logSize(f.Upgrader(n.Name))
	}
	store, err := f.Store("s1")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := store.SetTarget(ctx, rollout.Target{Version: "1.16.1", SetBy: "TestF5"}); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitRolledOut(ctx, store, "1.16.1", t.Logf); err != nil {
		t.Fatal(err)
	}
	t.Logf("3-server rollout 1.16.0 -> 1.16.1 under default-deny ACLs: %s", time.Since(start).Round(time.Millisecond))
	for _, n := range f.Managed() {
		out := logSince(f.Upgrader(n.Name), offs[n.Name])
		for _, line := range strings.Split(out, "\n") {
			// An agent that has just restarted answers "ACL not found" (sometimes "ACL system must be
			// bootstrapped") for a moment, before it has caught up with the ACL state. The confirm gate
			// counts such a sample as failing and summarizes it in its "confirmation:" line; a real token
			// problem would fail every sample and the rollout above would not have finished. Anything
			// else, and any "Permission denied", is a denial the shipped policy should have prevented.
			transient := strings.Contains(line, "ACL system must be bootstrapped") ||
				(strings.Contains(line, "confirmation:") && strings.Contains(line, "local agent does not answer"))
			if strings.Contains(line, "Permission denied") || (strings.Contains(line, "ACL not found") && !transient) {
				t.Errorf("upgrader %s met a denial during the rollout: %s", n.Name, line)
			}
		}
	}

	// The snapshot was taken with the separate snapshot token: the agent token itself may not.
	r, err := currentOrLastRollout(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	if r.Snapshot == nil || r.Snapshot.Path == "" {
		t.Errorf("no pre-upgrade snapshot recorded in rollout %s", r.ID)
	} else if st, err := os.Stat(r.Snapshot.Path); err != nil || st.Size() == 0 {
		t.Errorf("snapshot %s on %s: %v", r.Snapshot.Path, r.Snapshot.Node, err)
	} else {
		t.Logf("pre-upgrade snapshot: %s on %s (%d bytes), taken with consul.snapshot_token_file", r.Snapshot.Path, r.Snapshot.Node, st.Size())
	}
	agentClient, err := api.NewClient(&api.Config{Address: f.Cluster.Node("s1").HTTPAddr, Token: f.AgentToken})
	if err != nil {
		t.Fatal(err)
	}
	if rc, _, err := agentClient.Snapshot().Save(nil); err == nil {
		rc.Close()
		t.Errorf("the shipped agent policy allows /v1/snapshot: it is not least privilege")
	} else {
		var se api.StatusError
		if !errors.As(err, &se) || se.Code != 403 {
			t.Errorf("snapshot with the agent token: want 403, got %v", err)
		}
	}

	// No token ever reaches an upgrader log.
	var bytes int
	for _, n := range f.Managed() {
		all := logSince(f.Upgrader(n.Name), 0)
		bytes += len(all)
		for name, secret := range map[string]string{"management": f.ManagementToken, "agent": f.AgentToken, "partial": bad} {
			if strings.Contains(all, secret) {
				t.Errorf("the %s token appears in upgrader %s's log", name, n.Name)
			}
		}
	}
	t.Logf("%d bytes of upgrader logs (debug level) hold none of the 3 token secrets", bytes)
}

// policyWithout removes the rule that starts with head (a block up to its closing brace, or one line).
func policyWithout(t *testing.T, policy, head string) string {
	t.Helper()
	lines := strings.Split(policy, "\n")
	for i, l := range lines {
		if !strings.HasPrefix(l, head) {
			continue
		}
		end := i
		if strings.HasSuffix(strings.TrimSpace(l), "{") {
			for end < len(lines) && strings.TrimSpace(lines[end]) != "}" {
				end++
			}
		}
		return strings.Join(append(lines[:i:i], lines[end+1:]...), "\n")
	}
	t.Fatalf("no rule %q in the policy", head)
	return ""
}

func modifyIndex(p *api.KVPair) uint64 {
	if p == nil {
		return 0
	}
	return p.ModifyIndex
}

// currentOrLastRollout is the current rollout record, or the newest in the history once it finished.
func currentOrLastRollout(ctx context.Context, store *rollout.Store) (rollout.Rollout, error) {
	if r, err := store.ReadRollout(ctx); err == nil && r.ID != "" {
		return r, nil
	}
	hist, err := store.ListHistory(ctx)
	if err != nil || len(hist) == 0 {
		return rollout.Rollout{}, fmt.Errorf("no rollout record: %v", err)
	}
	return hist[len(hist)-1], nil
}

// logSize is the current length of an upgrader's log.
func logSize(u *Upgrader) int64 {
	st, err := os.Stat(u.LogPath)
	if err != nil {
		return 0
	}
	return st.Size()
}

// logSince returns an upgrader's log from byte offset off.
func logSince(u *Upgrader, off int64) string {
	fh, err := os.Open(u.LogPath)
	if err != nil {
		return ""
	}
	defer fh.Close()
	if _, err := fh.Seek(off, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(fh)
	return string(b)
}

// waitCond polls cond every 100ms until it holds or ctx ends.
func waitCond(ctx context.Context, what string, cond func() bool) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up waiting for %s: %w", what, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}
