package permission

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/upgrader-dev/upgrader/internal/testbin"
	"github.com/upgrader-dev/upgrader/internal/testcluster"
)

// Address blocks of this package's real-Consul tests: 127.0.40.x (ACLs, default deny) and 127.0.41.x
// (a cluster without a leader).

// aclCluster is a one-server cluster with ACLs in default-deny mode; its harness client uses the
// management token.
type aclCluster struct {
	c          *testcluster.Cluster
	management string
	mgmt       *api.Client
}

func newACLCluster(t *testing.T, ctx context.Context, block int) *aclCluster {
	t.Helper()
	testbin.Require(t, "1.16.1")
	mgmt := newSecret(t)
	c := testcluster.New(t, testcluster.Options{Block: block, Servers: 1, Version: "1.16.1",
		ExtraConfig:  ACLConfig(mgmt),
		ClientConfig: func(_ *testcluster.Node, cfg *api.Config) { cfg.Token = mgmt },
	})
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return &aclCluster{c: c, management: mgmt, mgmt: c.Servers()[0].API()}
}

// ACLConfig is the agent configuration of a default-deny cluster whose agents use the management token.
func ACLConfig(management string) string {
	return fmt.Sprintf(`acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true
  tokens {
    initial_management = %q
    agent              = %q
  }
}`, management, management)
}

// token creates a policy from rules and a token with a known secret.
func (a *aclCluster) token(t *testing.T, name, rules string) string {
	t.Helper()
	if _, _, err := a.mgmt.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil); err != nil {
		t.Fatalf("policy %s: %v", name, err)
	}
	secret := newSecret(t)
	if _, _, err := a.mgmt.ACL().TokenCreate(&api.ACLToken{SecretID: secret, Description: name,
		Policies: []*api.ACLTokenPolicyLink{{Name: name}}}, nil); err != nil {
		t.Fatalf("token %s: %v", name, err)
	}
	return secret
}

// client is an API client of the server with the given token.
func (a *aclCluster) client(t *testing.T, token string) *api.Client {
	t.Helper()
	n := a.c.Servers()[0]
	c, err := api.NewClient(&api.Config{Address: n.HTTPAddr, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newSecret(t testing.TB) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func shippedPolicy(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../jobs/acl/upgrader-agent.hcl")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// withoutRule removes the rule that starts with head (a block up to its closing brace, or one line).
func withoutRule(t *testing.T, policy, head string) string {
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

// syncBuffer is a log sink the test can read while loggers write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLogger(t *testing.T) (hclog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	return hclog.New(&hclog.LoggerOptions{Name: "test", Level: hclog.Trace, Output: buf}), buf
}

// leftovers lists what a check might have left behind: the probe key, the anchor node, its sessions.
func (a *aclCluster) leftovers(t *testing.T, node string) []string {
	t.Helper()
	var out []string
	if p, _, err := a.mgmt.KV().Get("upgrader/consul/probe/"+node, nil); err != nil || p != nil {
		out = append(out, fmt.Sprintf("probe key (err %v)", err))
	}
	if n, _, err := a.mgmt.Catalog().Node(AnchorNode(node), nil); err != nil || n != nil {
		out = append(out, fmt.Sprintf("anchor node (err %v)", err))
	}
	if s, _, err := a.mgmt.Session().Node(AnchorNode(node), nil); err != nil || len(s) > 0 {
		out = append(out, fmt.Sprintf("%d sessions (err %v)", len(s), err))
	}
	return out
}

// TestCheck_ACLDefaultDeny runs the check on a default-deny cluster (FAULTS F5): the shipped policy passes
// and leaves nothing behind; a token missing any one of its rules is refused with that rule named, before
// anything is written when the missing rule is a read; a token Consul does not know yet is waited for;
// no token ever reaches a log.
func TestCheck_ACLDefaultDeny(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real Consul cluster")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := newACLCluster(t, ctx, 40)
	node := a.c.Servers()[0].Name
	needs := Needs{KVPrefix: "upgrader/", Product: "consul", Node: node, Server: true}
	policy := shippedPolicy(t)
	var secrets []string
	logger, logs := testLogger(t)
	opts := Options{Logger: logger, Timeout: 30 * time.Second, MinBackoff: 100 * time.Millisecond}

	t.Run("shipped policy", func(t *testing.T) {
		secret := a.token(t, "upgrader-agent", policy)
		secrets = append(secrets, secret)
		rep, err := Check(ctx, a.client(t, secret), needs, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("shipped policy: %d rules proven with %d calls (%d retries) in %s", len(rep.Rules), rep.Calls, rep.Retries, rep.Took)
		if len(rep.Rules) != 8 {
			t.Errorf("rules proven: %v", rep.Rules)
		}
		if l := a.leftovers(t, node); len(l) > 0 {
			t.Errorf("the check left behind: %v", l)
		}
		// As a client the same token passes too, without the operator write step.
		rep, err = Check(ctx, a.client(t, secret), Needs{KVPrefix: "upgrader/", Product: "consul", Node: node}, opts)
		if err != nil || len(rep.Rules) != 7 {
			t.Fatalf("client needs: %v, %v", rep.Rules, err)
		}
	})

	t.Run("existing anchor with a live session is kept", func(t *testing.T) {
		anchor := AnchorNode(node)
		meta := map[string]string{"upgrader-anchor": "true", "upgrader-holder": node}
		if _, err := a.mgmt.Catalog().Register(&api.CatalogRegistration{Node: anchor, Address: "10.1.2.3", NodeMeta: meta}, nil); err != nil {
			t.Fatal(err)
		}
		id, _, err := a.mgmt.Session().CreateNoChecks(&api.SessionEntry{Node: anchor, TTL: "60s", Name: "held lock"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Check(ctx, a.client(t, secrets[0]), needs, opts); err != nil {
			t.Fatal(err)
		}
		n, _, err := a.mgmt.Catalog().Node(anchor, nil)
		if err != nil || n == nil || n.Node.Address != "10.1.2.3" || len(n.Node.Meta) != 2 || n.Node.Meta["upgrader-holder"] != node {
			t.Fatalf("anchor not restored: %+v, %v", n, err)
		}
		if s, _, err := a.mgmt.Session().Info(id, nil); err != nil || s == nil {
			t.Fatalf("the lock's session on the anchor is gone: %v", err)
		}
		_, _ = a.mgmt.Session().Destroy(id, nil)
		_, _ = a.mgmt.Catalog().Deregister(&api.CatalogDeregistration{Node: anchor}, nil)
	})

	cases := []struct {
		drop, replace string // the rule removed, and what replaces it
		want          string
		reads         bool // the missing rule is a read: nothing may have been written
	}{
		{drop: `agent_prefix ""`, want: RuleAgentRead, reads: true},
		{drop: `node_prefix ""`, want: RuleNodeRead, reads: true},
		{drop: `operator =`, want: RuleOperatorRead, reads: true},
		{drop: `service "consul"`, want: RuleServiceConsulRead, reads: true},
		{drop: `key_prefix "upgrader/"`, want: RuleKeyWrite("upgrader/")},
		{drop: `node_prefix "upgrader-anchor-"`, want: RuleAnchorNodeWrite},
		{drop: `session_prefix "upgrader-anchor-"`, want: RuleAnchorSessionWrite},
		{drop: `operator =`, replace: `operator = "read"`, want: RuleOperatorWrite},
	}
	for i, tc := range cases {
		t.Run("without "+tc.want, func(t *testing.T) {
			rules := withoutRule(t, policy, tc.drop) + "\n" + tc.replace + "\n"
			secret := a.token(t, fmt.Sprintf("partial-%d", i), rules)
			secrets = append(secrets, secret)
			c := a.client(t, secret)
			var writes uint64
			if tc.reads {
				_, meta, _ := a.mgmt.KV().List("upgrader/", nil)
				writes = meta.LastIndex
			}
			_, err := Check(ctx, c, needs, opts)
			var d *DeniedError
			if !errors.As(err, &d) || d.Rule != tc.want {
				t.Fatalf("want a DeniedError naming %s, got %v", tc.want, err)
			}
			t.Logf("refused: %v", err)
			if l := a.leftovers(t, node); len(l) > 0 {
				t.Errorf("the refused check left behind: %v", l)
			}
			if tc.reads {
				_, meta, _ := a.mgmt.KV().List("upgrader/", nil)
				if meta.LastIndex != writes {
					t.Errorf("KV under upgrader/ changed (index %d -> %d) although a read rule was missing", writes, meta.LastIndex)
				}
			}
		})
	}

	t.Run("token created after the check started", func(t *testing.T) {
		secret := newSecret(t)
		secrets = append(secrets, secret)
		// Unknown for good: the deadline ends the wait with the reason.
		short := opts
		short.Timeout = 1500 * time.Millisecond
		_, err := Check(ctx, a.client(t, secret), needs, short)
		if !errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrTokenUnknown) || !strings.Contains(err.Error(), "ACL not found") || !strings.Contains(err.Error(), "consul.token_file") {
			t.Fatalf("unknown token: %v", err)
		}
		t.Logf("unknown token, 1.5s deadline: %v", err)
		// Created a moment later: the check waits for it and passes.
		done := make(chan error, 1)
		var rep Report
		go func() {
			var err error
			rep, err = Check(ctx, a.client(t, secret), needs, opts)
			done <- err
		}()
		waitLog(t, ctx, logs, "ACL not found", 2) // the failed check above logged it once
		if _, _, err := a.mgmt.ACL().PolicyCreate(&api.ACLPolicy{Name: "late", Rules: policy}, nil); err != nil {
			t.Fatal(err)
		}
		if _, _, err := a.mgmt.ACL().TokenCreate(&api.ACLToken{SecretID: secret, Policies: []*api.ACLTokenPolicyLink{{Name: "late"}}}, nil); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if rep.Retries == 0 {
			t.Errorf("the check never met the unknown token (0 retries)")
		}
		t.Logf("token created after the check met \"ACL not found\": passed after %d retries in %s", rep.Retries, rep.Took)
	})

	t.Run("snapshot needs a management token", func(t *testing.T) {
		_, _, err := a.client(t, secrets[0]).Snapshot().Save(nil)
		err = SnapshotError(err, false)
		if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), "consul.snapshot_token_file") {
			t.Fatalf("snapshot with the agent's token: %v", err)
		}
		t.Logf("snapshot with the agent token: %v", err)
		rc, _, err := a.mgmt.Snapshot().Save(nil)
		if err != nil {
			t.Fatalf("snapshot with the management token: %v", err)
		}
		rc.Close()
	})

	out := logs.String()
	if !strings.Contains(out, "permission") {
		t.Fatalf("no log output captured")
	}
	for _, s := range append(secrets, a.management) {
		if strings.Contains(out, s) {
			t.Errorf("a token secret appears in the logs")
		}
	}
	t.Logf("%d bytes of trace logs checked for %d token secrets", len(out), len(secrets)+1)
}

// TestCheck_RetriesWithoutLeader: "500 No cluster leader" is retried with backoff, ends in ErrUnavailable
// with the reason at the deadline, and turns into a pass once a leader is elected.
func TestCheck_RetriesWithoutLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real Consul cluster")
	}
	t.Parallel()
	testbin.Require(t, "1.16.1")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Two servers expected, one started: it answers HTTP but never has a leader. A request that needs
	// the leader waits rpc_hold_timeout (7s by default) for one before Consul answers "No cluster leader".
	c := testcluster.New(t, testcluster.Options{Block: 41, Servers: 2, Version: "1.16.1"})
	s1, s2 := c.Node("s1"), c.Node("s2")
	hold := []byte("performance {\n  rpc_hold_timeout = \"1s\"\n}\n")
	if err := os.WriteFile(filepath.Join(s1.ConfigDir, "rpc-hold.hcl"), hold, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s1.Start(ctx); err != nil {
		t.Fatal(err)
	}
	logger, logs := testLogger(t)
	needs := Needs{KVPrefix: "upgrader/", Product: "consul", Node: "s1", Server: true}
	_, err := Check(ctx, s1.API(), needs, Options{Timeout: 3 * time.Second, MinBackoff: 100 * time.Millisecond, Logger: logger})
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrTokenUnknown) || !strings.Contains(err.Error(), "No cluster leader") {
		t.Fatalf("leaderless: %v", err)
	}
	t.Logf("leaderless, 3s deadline: %v", err)

	done := make(chan error, 1)
	var rep Report
	go func() {
		var err error
		rep, err = Check(ctx, s1.API(), needs, Options{Timeout: time.Minute, MinBackoff: 100 * time.Millisecond, Logger: logger})
		done <- err
	}()
	waitLog(t, ctx, logs, "No cluster leader", 2) // once from the check above, once from this one
	start := time.Now()
	if err := s2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if rep.Retries == 0 {
		t.Errorf("expected retries while there was no leader")
	}
	t.Logf("second server started: check passed %s later after %d retries (%d calls)", time.Since(start).Round(time.Millisecond), rep.Retries, rep.Calls)
}

// waitLog waits until s appears at least n times in the logs.
func waitLog(t *testing.T, ctx context.Context, logs *syncBuffer, s string, n int) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for strings.Count(logs.String(), s) < n {
		select {
		case <-ctx.Done():
			t.Fatalf("never logged %q %d times", s, n)
		case <-tick.C:
		}
	}
}
