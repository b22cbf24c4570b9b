package agent

import (
	"context"
	"reflect"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/upgrader-dev/upgrader/internal/health"
	"github.com/upgrader-dev/upgrader/internal/rollout"
)

// serverObs is a healthy 3-server observation from s1's point of view, with leader as the raft leader.
func serverObs(leader string) health.Observation {
	addr := map[string]string{"s1": "10.0.0.1:8300", "s2": "10.0.0.2:8300", "s3": "10.0.0.3:8300"}
	obs := health.Observation{
		At:           time.Now(),
		Local:        health.LocalAgent{NodeName: "s1", Version: "1.16.0", Server: true, Raft: &health.RaftStats{State: "Follower"}},
		LocalLeader:  addr[leader],
		PeersQueried: true,
		Raft:         &health.RaftConfiguration{},
		Autopilot:    &health.AutopilotHealth{Healthy: true, FailureTolerance: 1},
	}
	if leader == "s1" {
		obs.Local.Raft.State = "Leader"
	}
	for _, n := range []string{"s1", "s2", "s3"} {
		obs.Raft.Servers = append(obs.Raft.Servers, health.RaftServer{Node: n, Address: addr[n], Leader: n == leader, Voter: true})
		obs.ServerLeaders = append(obs.ServerLeaders, health.ServerLeader{Node: n, Leader: addr[leader]})
		obs.Members = append(obs.Members, health.Member{Name: n, Role: "server", Version: "1.16.0", Status: health.MemberAlive})
	}
	return obs
}

// transferCluster is a Cluster whose first failTransfers transfers are accepted but do not move the
// leadership (raft aborted them), as seen when the target had restarted moments before.
type transferCluster struct {
	mu            sync.Mutex
	calls         int
	failTransfers int
	leader        string
}

func (c *transferCluster) TransferLeader(context.Context, string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.calls > c.failTransfers {
		c.leader = "s2"
	}
	return nil
}
func (c *transferCluster) Snapshot(context.Context, string) error         { return nil }
func (c *transferCluster) ServersUpgrading(context.Context) (bool, error) { return false, nil }
func (c *transferCluster) observe(context.Context) (health.Observation, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return serverObs(c.leader), nil
}

func TestTransferLeadership_AsksAgainWhileTheLeadershipHasNotMoved(t *testing.T) {
	cases := []struct {
		name          string
		failTransfers int
		wantCalls     int
		wantLeader    string
	}{
		{"first transfer moves it", 0, 1, "s2"},
		{"first two transfers aborted by raft", 2, 3, "s2"},
		{"never moves: gives up within the transfer timeout", 1000, -1, "s1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			defer goleak.VerifyNone(t)
			w := newWorld(t, "1.16.0", "1.16.1")
			c := &transferCluster{failTransfers: tc.failTransfers, leader: "s1"}
			a := w.newAgent(t, func(o *Options) {
				o.Node, o.Server, o.Cluster, o.Observe = "s1", true, c, c.observe
			})
			a.transferWait = 30 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if tc.wantCalls < 0 {
				// Bound the whole transfer by the caller's context instead of the 30s transferTimeout.
				ctx, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
				defer cancel()
			}
			start := time.Now()
			a.transferLeadership(ctx)
			c.mu.Lock()
			defer c.mu.Unlock()
			if tc.wantCalls >= 0 && c.calls != tc.wantCalls {
				t.Errorf("%d transfer calls, want %d", c.calls, tc.wantCalls)
			}
			if tc.wantCalls < 0 && c.calls < 3 {
				t.Errorf("only %d transfer calls in %s; it should keep asking", c.calls, time.Since(start))
			}
			if c.leader != tc.wantLeader {
				t.Errorf("leader %s, want %s", c.leader, tc.wantLeader)
			}
		})
	}
}

func TestLeaderMovedOff(t *testing.T) {
	policy := health.Policy{}
	if v := leaderMovedOff(serverObs("s1"), "s1", policy); v.Pass {
		t.Error("passed while s1 is still the leader")
	}
	if v := leaderMovedOff(serverObs("s2"), "s1", policy); !v.Pass {
		t.Errorf("did not pass with s2 leading: %v", v.Reasons)
	}
	stale := serverObs("s2")
	stale.ServerLeaders[2].Leader = "10.0.0.1:8300"
	if v := leaderMovedOff(stale, "s1", policy); v.Pass {
		t.Error("passed while s3 still names s1 leader")
	}
}

func TestOrderTransferTargets(t *testing.T) {
	at := func(s int) time.Time { return time.Date(2026, 12, 3, 12, 0, s, 0, time.UTC) }
	servers := []health.RaftServer{
		{ID: "id1", Node: "s1", Voter: true, Leader: true},
		{ID: "id2", Node: "s2", Voter: true},
		{ID: "id3", Node: "s3", Voter: true},
		{ID: "id4", Node: "s4", Voter: false},
		{ID: "id5", Node: "s5", Voter: true},
	}
	statuses := []rollout.NodeStatus{
		{Node: "s2", State: rollout.StateDone, Since: at(40)}, // restarted seconds ago
		{Node: "s3", State: rollout.StateDone, Since: at(10)}, // upgraded first
		{Node: "s5", State: rollout.StateWaiting},
	}
	got := orderTransferTargets(servers, statuses, "s1")
	var nodes []string
	for _, g := range got {
		nodes = append(nodes, g.node)
	}
	if want := []string{"s3", "s2", "s5"}; !reflect.DeepEqual(nodes, want) {
		t.Fatalf("order = %v, want %v (upgraded longest ago first, non-voters and self left out)", nodes, want)
	}
	if orderTransferTargets(servers[:1], nil, "s1") != nil {
		t.Fatal("no other voter: no target")
	}
}
