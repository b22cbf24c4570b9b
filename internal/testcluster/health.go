package testcluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// serfAlive is serf's MemberStatus for an alive member (api.AgentMember.Status).
const serfAlive = 1

// maxFollowerContact is the staleness beyond which a follower's own view of the leader is not healthy.
const maxFollowerContact = 2 * time.Second

// WaitLeader waits until every server reports the same non-empty leader and returns its address
// ("127.0.N.x:8300").
func (c *Cluster) WaitLeader(ctx context.Context) (string, error) {
	var leader string
	err := poll(ctx, "every server to agree on a leader", func(ctx context.Context) error {
		seen := make(map[string]string)
		for _, s := range c.Servers() {
			l, err := s.Leader(ctx)
			if err != nil {
				return err
			}
			seen[s.Name] = l
		}
		l, err := agreedLeader(seen)
		leader = l
		return err
	})
	return leader, err
}

// agreedLeader returns the one non-empty leader every server names. Pure.
func agreedLeader(seen map[string]string) (string, error) {
	var leader string
	names := make([]string, 0, len(seen))
	for name := range seen {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		l := seen[name]
		if l == "" {
			return "", fmt.Errorf("%w: %s reports none", ErrNotLeader, name)
		}
		if leader != "" && l != leader {
			return "", fmt.Errorf("%w: servers disagree (%s)", ErrNotLeader, describe(seen, names))
		}
		leader = l
	}
	if leader == "" {
		return "", fmt.Errorf("%w: no servers", ErrNotLeader)
	}
	return leader, nil
}

func describe(seen map[string]string, names []string) string {
	parts := make([]string, len(names))
	for i, name := range names {
		parts[i] = name + "=" + strconv.Quote(seen[name])
	}
	return strings.Join(parts, " ")
}

// Leader waits for an agreed leader (see WaitLeader) and returns its node.
func (c *Cluster) Leader(ctx context.Context) (*Node, error) {
	addr, err := c.WaitLeader(ctx)
	if err != nil {
		return nil, err
	}
	n := c.NodeByAddr(addr)
	if n == nil {
		return nil, fmt.Errorf("%w: leader %s is not a node of this cluster", ErrNotLeader, addr)
	}
	return n, nil
}

// Followers returns the servers that are not the agreed leader.
func (c *Cluster) Followers(ctx context.Context) ([]*Node, error) {
	leader, err := c.Leader(ctx)
	if err != nil {
		return nil, err
	}
	var out []*Node
	for _, s := range c.Servers() {
		if s != leader {
			out = append(out, s)
		}
	}
	return out, nil
}

// AutopilotHealth reads /v1/operator/autopilot/health once, through the first server that answers.
func (c *Cluster) AutopilotHealth(ctx context.Context) (*api.OperatorHealthReply, error) {
	var errs []error
	for _, s := range c.Servers() {
		h, err := s.API().Operator().AutopilotServerHealth((&api.QueryOptions{}).WithContext(ctx))
		if err == nil {
			return h, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", s.Name, err))
	}
	return nil, fmt.Errorf("failed to read autopilot health: %w", errors.Join(errs...))
}

// WantFailureTolerance is the failure tolerance of a healthy cluster of n voting servers.
func WantFailureTolerance(n int) int { return (n - 1) / 2 }

// WaitAutopilotHealthy waits until autopilot reports the cluster healthy, with exactly this cluster's
// servers, every one healthy and a voter, and the full failure tolerance; it returns that reply.
// Autopilot refreshes about every 2 s and can miss a quick restart entirely: WaitAutopilotHealthySince
// and WaitHealthy demand a sample taken after a known write.
func (c *Cluster) WaitAutopilotHealthy(ctx context.Context) (*api.OperatorHealthReply, error) {
	return c.WaitAutopilotHealthySince(ctx, 0)
}

// WaitAutopilotHealthySince is WaitAutopilotHealthy that also requires every server's LastIndex in the
// reply to be at least index: the sample was taken after that raft index existed, and every server holds it.
func (c *Cluster) WaitAutopilotHealthySince(ctx context.Context, index uint64) (*api.OperatorHealthReply, error) {
	var reply *api.OperatorHealthReply
	names := nodeNames(c.Servers())
	err := poll(ctx, "autopilot to report the cluster healthy", func(ctx context.Context) error {
		h, err := c.AutopilotHealth(ctx)
		if err != nil {
			return err
		}
		reply = h
		return checkAutopilot(h, names, index)
	})
	return reply, err
}

// checkAutopilot judges one autopilot health reply against the expected server names and the raft index
// every server must have reached. Pure.
func checkAutopilot(h *api.OperatorHealthReply, names []string, minIndex uint64) error {
	var problems []string
	if !h.Healthy {
		problems = append(problems, "not healthy")
	}
	if want := WantFailureTolerance(len(names)); h.FailureTolerance != want {
		problems = append(problems, fmt.Sprintf("failure tolerance %d, want %d", h.FailureTolerance, want))
	}
	got := make(map[string]api.ServerHealth, len(h.Servers))
	for _, s := range h.Servers {
		got[s.Name] = s
	}
	for _, name := range names {
		s, ok := got[name]
		switch {
		case !ok:
			problems = append(problems, name+" missing")
		case !s.Healthy:
			problems = append(problems, name+" unhealthy")
		case !s.Voter:
			problems = append(problems, name+" not a voter")
		case s.LastIndex < minIndex:
			problems = append(problems, fmt.Sprintf("%s at index %d, want >= %d", name, s.LastIndex, minIndex))
		}
		delete(got, name)
	}
	for name := range got {
		problems = append(problems, "unexpected server "+name)
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		return fmt.Errorf("%w: autopilot: %s", ErrUnhealthy, strings.Join(problems, "; "))
	}
	return nil
}

// WaitRaft waits until every server's own raft view (taken from that server now, not from autopilot's
// periodic sample) is settled: it is the leader or a follower in recent contact, with all other servers
// as voting peers.
func (c *Cluster) WaitRaft(ctx context.Context) error {
	servers := c.Servers()
	return poll(ctx, "every server's raft view to settle", func(ctx context.Context) error {
		for _, s := range servers {
			stats, err := s.RaftStats(ctx)
			if err != nil {
				return err
			}
			if err := checkRaftView(s.Name, stats, len(servers)); err != nil {
				return err
			}
		}
		return nil
	})
}

// checkRaftView judges one server's raft stats. Pure.
func checkRaftView(name string, stats map[string]string, servers int) error {
	if got, want := stats["num_peers"], strconv.Itoa(servers-1); got != want {
		return fmt.Errorf("%w: %s has %s voting peers, want %s", ErrUnhealthy, name, got, want)
	}
	switch state := stats["state"]; state {
	case "Leader":
		return nil
	case "Follower":
		lc := stats["last_contact"]
		d, err := time.ParseDuration(lc)
		if err != nil {
			return fmt.Errorf("%w: %s last contact with the leader is %q", ErrUnhealthy, name, lc)
		}
		if d > maxFollowerContact {
			return fmt.Errorf("%w: %s last heard from the leader %s ago", ErrUnhealthy, name, d)
		}
		return nil
	default:
		return fmt.Errorf("%w: %s raft state is %q", ErrUnhealthy, name, state)
	}
}

// WaitMembers waits until every server sees every node of the cluster as an alive LAN member.
func (c *Cluster) WaitMembers(ctx context.Context) error {
	return poll(ctx, "every node to be an alive member", func(ctx context.Context) error {
		for _, s := range c.Servers() {
			members, err := s.Members(ctx)
			if err != nil {
				return err
			}
			if err := checkMembers(s.Name, members, c.nodes); err != nil {
				return err
			}
		}
		return nil
	})
}

// checkMembers judges one agent's member list against the cluster's nodes. Pure.
func checkMembers(viewer string, members []*api.AgentMember, nodes []*Node) error {
	byName := make(map[string]*api.AgentMember, len(members))
	for _, m := range members {
		byName[m.Name] = m
	}
	for _, n := range nodes {
		m, ok := byName[n.Name]
		switch {
		case !ok:
			return fmt.Errorf("%w: %s does not see %s", ErrUnhealthy, viewer, n.Name)
		case m.Status != serfAlive:
			return fmt.Errorf("%w: %s sees %s with serf status %d", ErrUnhealthy, viewer, n.Name, m.Status)
		case m.Addr != n.IP:
			return fmt.Errorf("%w: %s sees %s at %s, want %s", ErrUnhealthy, viewer, n.Name, m.Addr, n.IP)
		}
	}
	return nil
}

// WaitWritable waits until a KV write through each given node (all nodes when none are given) succeeds
// and reads back consistently; it writes testcluster/probe/<node> and returns the highest raft index
// those writes got.
func (c *Cluster) WaitWritable(ctx context.Context, nodes ...*Node) (uint64, error) {
	if len(nodes) == 0 {
		nodes = c.nodes
	}
	var index uint64
	for _, n := range nodes {
		key := "testcluster/probe/" + n.Name
		err := poll(ctx, "a KV write through "+n.Name, func(ctx context.Context) error {
			kv := n.API().KV()
			p := &api.KVPair{Key: key, Value: []byte(time.Now().UTC().Format(time.RFC3339Nano))}
			if _, err := kv.Put(p, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
				return fmt.Errorf("failed to write %s through %s: %w", key, n.Name, err)
			}
			got, _, err := kv.Get(key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
			if err != nil {
				return fmt.Errorf("failed to read %s back through %s: %w", key, n.Name, err)
			}
			if got == nil || string(got.Value) != string(p.Value) {
				return fmt.Errorf("%w: %s read back through %s does not hold the value written", ErrUnhealthy, key, n.Name)
			}
			index = max(index, got.ModifyIndex)
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	return index, nil
}

// WaitHealthy waits until, in this order: every server agrees on one non-empty leader; every server's
// own raft view is settled (leader, or follower in recent contact, with all other servers as voting
// peers); every server sees every node as an alive member; a KV write through every node succeeds and
// reads back consistently; autopilot, in a sample that already holds those writes on every server,
// reports the cluster healthy with every server a healthy voter and the full failure tolerance; and the
// servers still agree on a leader. Without a deadline on ctx, DefaultWaitTimeout applies.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	ctx, cancel := withDefaultDeadline(ctx)
	defer cancel()
	start := time.Now()
	if _, err := c.WaitLeader(ctx); err != nil {
		return err
	}
	if err := c.WaitRaft(ctx); err != nil {
		return err
	}
	if err := c.WaitMembers(ctx); err != nil {
		return err
	}
	index, err := c.WaitWritable(ctx)
	if err != nil {
		return err
	}
	if _, err := c.WaitAutopilotHealthySince(ctx, index); err != nil {
		return err
	}
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		return err
	}
	c.logger.Debug("cluster healthy", "leader", leader, "index", index, "waited", time.Since(start).Round(time.Millisecond))
	return nil
}

func nodeNames(nodes []*Node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.Name
	}
	return out
}
