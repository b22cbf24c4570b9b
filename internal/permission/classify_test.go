package permission

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/hashicorp/consul/api"
)

func TestClassify(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want verdict
	}{
		{"nil", nil, allowed},
		{"permission denied", api.StatusError{Code: 403, Body: "Permission denied: token with AccessorID 'a' lacks permission 'key:write' on \"upgrader/x\""}, denied},
		{"wrapped 403", fmt.Errorf("failed: %w", api.StatusError{Code: 403, Body: "Permission denied"}), denied},
		{"token not known yet", api.StatusError{Code: 403, Body: "ACL not found"}, transient},
		{"no leader", api.StatusError{Code: 500, Body: "No cluster leader"}, transient},
		{"no known servers", api.StatusError{Code: 500, Body: "No known Consul servers"}, transient},
		{"rate limited", api.StatusError{Code: 429, Body: "rate limit exceeded"}, transient},
		{"unavailable", api.StatusError{Code: 503, Body: "rate limit exceeded"}, transient},
		{"bad request", api.StatusError{Code: 400, Body: "Bad request"}, failed},
		{"not found", api.StatusError{Code: 404, Body: "no such thing"}, failed},
		{"text 403", errors.New("Unexpected response code: 403 (Permission denied: token lacks permission)"), denied},
		{"text no leader", errors.New("Unexpected response code: 500 (No cluster leader)"), transient},
		{"refused", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, transient},
		{"call timeout", fmt.Errorf("Get x: %w", context.DeadlineExceeded), transient},
		{"other", errors.New("json: cannot unmarshal"), failed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := classify(tc.err); got != tc.want {
				t.Fatalf("classify(%v) = %s, want %s", tc.err, got, tc.want)
			}
		})
	}
}

func TestDeniedError_NamesTheRuleAndTheCall(t *testing.T) {
	e := &DeniedError{Rule: RuleKeyWrite("upgrader/"), Method: "PUT", Path: "/v1/kv/upgrader/consul/probe/s1", Status: 403}
	want := `token lacks "key_prefix \"upgrader/\" { policy = \"write\" }": Consul answered 403 for PUT /v1/kv/upgrader/consul/probe/s1`
	if e.Error() != want {
		t.Fatalf("got  %s\nwant %s", e.Error(), want)
	}
	if !errors.Is(e, ErrDenied) {
		t.Fatal("DeniedError does not wrap ErrDenied")
	}
	f := &DeniedError{Rule: RuleNodeRead, Method: "GET", Path: "/v1/agent/members", Status: 200, Detail: "0 members visible"}
	if want := `token lacks "node_prefix \"\" { policy = \"read\" }": Consul filtered GET /v1/agent/members by ACLs (0 members visible)`; f.Error() != want {
		t.Fatalf("got  %s\nwant %s", f.Error(), want)
	}
}

func TestSnapshotError_SaysWhichTokenToConfigure(t *testing.T) {
	denied := api.StatusError{Code: 403, Body: "Permission denied: token with AccessorID 'a' lacks permission 'acl:write'"}
	err := SnapshotError(denied, false)
	if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), "set consul.snapshot_token_file") || !strings.Contains(err.Error(), strconv.Quote(RuleSnapshot)) {
		t.Fatalf("without a snapshot token: %v", err)
	}
	err = SnapshotError(denied, true)
	if !strings.Contains(err.Error(), "the token in consul.snapshot_token_file lacks") {
		t.Fatalf("with a snapshot token: %v", err)
	}
	other := api.StatusError{Code: 500, Body: "No cluster leader"}
	if got := SnapshotError(other, false); !errors.Is(got, other) || errors.Is(got, ErrDenied) {
		t.Fatalf("a transient error was rewritten: %v", got)
	}
}

// TestRules_MatchShippedPolicy: every rule the check can name is, word for word (modulo whitespace), a
// rule of jobs/acl/upgrader-agent.hcl, and the file holds no rule the check does not exercise.
func TestRules_MatchShippedPolicy(t *testing.T) {
	rules := shippedRules(t)
	want := []string{RuleKeyWrite("upgrader/"), RuleAnchorNodeWrite, RuleAnchorSessionWrite, RuleNodeRead,
		RuleServiceConsulRead, RuleAgentRead, RuleOperatorWrite}
	for _, r := range want {
		if !rules[r] {
			t.Errorf("jobs/acl/upgrader-agent.hcl lacks %s (found %v)", r, rules)
		}
		delete(rules, r)
	}
	for r := range rules {
		t.Errorf("jobs/acl/upgrader-agent.hcl has %s, which the permission check does not exercise", r)
	}
}

var blockRe = regexp.MustCompile(`(?s)(\w+(?: "[^"]*")?) \{ (policy = "\w+") \}|(\w+ = "\w+")`)

// shippedRules reads the policy file into the one-line form the check uses.
func shippedRules(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../../jobs/acl/upgrader-agent.hcl")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	flat := strings.Join(lines, " ")
	out := map[string]bool{}
	for _, m := range blockRe.FindAllStringSubmatch(flat, -1) {
		if m[3] != "" {
			out[m[3]] = true
		} else {
			out[m[1]+" { "+m[2]+" }"] = true
		}
	}
	return out
}
