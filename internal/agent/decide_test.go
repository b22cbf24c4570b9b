package agent

import (
	"errors"
	"reflect"
	"testing"

	"github.com/upgrader-dev/upgrader/internal/health"
	"github.com/upgrader-dev/upgrader/internal/rollout"
)

func members(spec ...string) []health.Member {
	// spec: "name role version status"
	var out []health.Member
	for i := 0; i+3 < len(spec); i += 4 {
		st := health.MemberAlive
		if spec[i+3] == "failed" {
			st = health.MemberFailed
		}
		out = append(out, health.Member{Name: spec[i], Role: spec[i+1], Version: spec[i+2], Status: st})
	}
	return out
}

func TestDecide(t *testing.T) {
	old3 := members("s1", "server", "1.16.0", "alive", "s2", "server", "1.16.0", "alive", "s3", "server", "1.16.0", "alive")
	s1new := members("s1", "server", "1.16.1", "alive", "s2", "server", "1.16.0", "alive", "s3", "server", "1.16.0", "alive")
	allNew := members("s1", "server", "1.16.1", "alive", "s2", "server", "1.16.1", "alive", "s3", "server", "1.16.1", "alive")
	s2failed := members("s1", "server", "1.16.1", "alive", "s2", "server", "1.16.1", "failed", "s3", "server", "1.16.1", "alive")
	cases := []struct {
		name    string
		in      Inputs
		want    Action
		pending []string
	}{
		{"no target", Inputs{LocalVersion: "1.16.0"}, ActionIdle, nil},
		{"invalid target", Inputs{TargetErr: errors.New("target: bad"), LocalVersion: "1.16.0"}, ActionInvalid, nil},
		{"up to date", Inputs{Target: "1.16.1", LocalVersion: "1.16.1", Server: true}, ActionUpToDate, nil},
		{"downgrade refused", Inputs{Target: "1.16.0", LocalVersion: "1.16.1", Server: true}, ActionRefuse, nil},
		{"downgrade allowed", Inputs{Target: "1.16.0", LocalVersion: "1.16.1", AllowDowngrade: true, Server: true, Node: "s1"}, ActionUpgrade, nil},
		{"paused", Inputs{Target: "1.16.1", LocalVersion: "1.16.0", Control: "paused"}, ActionBlocked, nil},
		{"halted", Inputs{Target: "1.16.1", LocalVersion: "1.16.0", Control: "halted", ControlReason: "s2 failed"}, ActionBlocked, nil},
		{"up to date wins over halted", Inputs{Target: "1.16.1", LocalVersion: "1.16.1", Control: "halted"}, ActionUpToDate, nil},
		{"follower upgrades", Inputs{Target: "1.16.1", LocalVersion: "1.16.0", Server: true, Node: "s2", Members: old3}, ActionUpgrade, nil},
		{"leader waits", Inputs{Target: "1.16.1", LocalVersion: "1.16.0", Server: true, Node: "s1", IsLeader: true, Members: old3}, ActionWaitLeader, []string{"s2", "s3"}},
		{"leader last goes", Inputs{Target: "1.16.1", LocalVersion: "1.16.0", Server: true, Node: "s1", IsLeader: true,
			Members: members("s1", "server", "1.16.0", "alive", "s2", "server", "1.16.1", "alive", "s3", "server", "1.16.1", "alive")}, ActionUpgrade, nil},
		{"client waits for servers", Inputs{Target: "1.16.1", LocalVersion: "1.16.0", Node: "c1", Members: s1new}, ActionWaitServer, []string{"s2", "s3"}},
		{"client waits for a failed server", Inputs{Target: "1.16.1", LocalVersion: "1.16.0", Node: "c1", Members: s2failed}, ActionWaitServer, []string{"s2"}},
		{"client goes", Inputs{Target: "1.16.1", LocalVersion: "1.16.0", Node: "c1", Members: append(allNew, health.Member{Name: "c1", Role: "client", Version: "1.16.0", Status: health.MemberAlive})}, ActionUpgrade, nil},
		{"client waits while the last server confirms", Inputs{Target: "1.16.1", LocalVersion: "1.16.0", Node: "c1", Members: allNew, ServersBusy: true}, ActionWaitServer, nil},
		{"unparsable local version", Inputs{Target: "1.16.1", LocalVersion: "garbage"}, ActionInvalid, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := Decide(tc.in)
			if got.Action != tc.want {
				t.Fatalf("Decide = %s (%s), want %s", got.Action, got.Reason, tc.want)
			}
			if !reflect.DeepEqual(got.Pending, tc.pending) {
				t.Fatalf("pending = %v, want %v", got.Pending, tc.pending)
			}
			if got.Reason == "" {
				t.Fatal("every plan must say why")
			}
		})
	}
}

func TestRolloutComplete(t *testing.T) {
	st := func(v string, state rollout.NodeState) rollout.NodeStatus {
		return rollout.NodeStatus{Version: v, State: state}
	}
	cases := []struct {
		name     string
		statuses []rollout.NodeStatus
		want     bool
	}{
		{"no records", nil, false},
		{"all done", []rollout.NodeStatus{st("1.16.1", rollout.StateDone), st("1.16.1", rollout.StateUpToDate)}, true},
		{"one behind", []rollout.NodeStatus{st("1.16.1", rollout.StateDone), st("1.16.0", rollout.StateWaiting)}, false},
		{"one confirming", []rollout.NodeStatus{st("1.16.1", rollout.StateDone), st("1.16.1", rollout.StateConfirming)}, false},
		{"one failed", []rollout.NodeStatus{st("1.16.1", rollout.StateDone), st("1.16.0", rollout.StateFailed)}, false},
	}
	for _, tc := range cases {
		if got := RolloutComplete("1.16.1", tc.statuses); got != tc.want {
			t.Errorf("%s: RolloutComplete = %v, want %v", tc.name, got, tc.want)
		}
	}
}
