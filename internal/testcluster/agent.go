package testcluster

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
)

// logTailInErrors is how many log lines an agent-exited error carries.
const logTailInErrors = 20

// Self reads the agent's /v1/agent/self.
func (n *Node) Self(ctx context.Context) (map[string]map[string]any, error) {
	var out map[string]map[string]any
	q := (&api.QueryOptions{}).WithContext(ctx)
	if _, err := n.API().Raw().Query("/v1/agent/self", &out, q); err != nil {
		return nil, fmt.Errorf("failed to read /v1/agent/self of %s: %w", n.Name, err)
	}
	return out, nil
}

// Version is the Consul version the running agent reports (/v1/agent/self Config.Version, e.g. "1.16.1").
func (n *Node) Version(ctx context.Context) (string, error) {
	self, err := n.Self(ctx)
	if err != nil {
		return "", err
	}
	v, _ := self["Config"]["Version"].(string)
	if v == "" {
		return "", fmt.Errorf("failed to read the version of %s: no Config.Version in /v1/agent/self", n.Name)
	}
	return v, nil
}

// RaftStats are the server's own raft statistics (/v1/agent/self Stats.raft: state, num_peers,
// last_contact, applied_index, ...). A client has none.
func (n *Node) RaftStats(ctx context.Context) (map[string]string, error) {
	self, err := n.Self(ctx)
	if err != nil {
		return nil, err
	}
	stats, ok := self["Stats"]["raft"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("failed to read raft stats of %s: none in /v1/agent/self", n.Name)
	}
	out := make(map[string]string, len(stats))
	for k, v := range stats {
		out[k] = fmt.Sprint(v)
	}
	return out, nil
}

// WaitReady waits until the agent's HTTP API answers /v1/agent/self. If the harness runs the agent and
// it exits first, it fails at once with ErrExited and the tail of the agent's log.
func (n *Node) WaitReady(ctx context.Context) error {
	p := n.current()
	return poll(ctx, "agent "+n.Name+" to answer on "+n.HTTPAddr, func(ctx context.Context) error {
		if p != nil && p.exited() {
			return permanent(n.exitedError(p))
		}
		_, err := n.Self(ctx)
		return err
	})
}

func (n *Node) exitedError(p *proc) error {
	tail, _ := n.LogTail(logTailInErrors)
	return fmt.Errorf("%w: %s (%s): %s; log tail:\n%s", ErrExited, n.Name, n.Binary(), exitText(p.err), tail)
}

// LogTail returns the last lines of the node's log file.
func (n *Node) LogTail(lines int) (string, error) {
	return tailFile(n.LogPath, lines)
}

// Members reads the LAN members as this agent sees them.
func (n *Node) Members(ctx context.Context) ([]*api.AgentMember, error) {
	var out []*api.AgentMember
	q := (&api.QueryOptions{}).WithContext(ctx)
	if _, err := n.API().Raw().Query("/v1/agent/members", &out, q); err != nil {
		return nil, fmt.Errorf("failed to read members from %s: %w", n.Name, err)
	}
	return out, nil
}

// Leader is the leader address this server reports ("" when it knows none).
func (n *Node) Leader(ctx context.Context) (string, error) {
	l, err := n.API().Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("failed to read the leader from %s: %w", n.Name, err)
	}
	return strings.TrimSpace(l), nil
}
