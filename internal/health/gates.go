package health

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-version"
)

// The gates below are pure: no network calls, no clock reads, no blocking. They turn one Observation
// (plus what was recorded before the upgrade, plus the decision time) into a Verdict whose reasons name
// every failed condition in operator language. Holding a verdict over time is confirm.go's job.

// GateFunc is the shape of a gate as Confirm and WaitUntil use it.
type GateFunc func(obs Observation, now time.Time) Verdict

// PreflightGate binds a policy to Preflight.
func PreflightGate(policy Policy) GateFunc {
	return func(obs Observation, _ time.Time) Verdict { return Preflight(obs, policy) }
}

// ServerConfirmGate binds a baseline to ServerConfirm.
func ServerConfirmGate(base Baseline) GateFunc {
	return func(obs Observation, now time.Time) Verdict { return ServerConfirm(obs, base, now) }
}

// ClientConfirmGate binds a baseline to ClientConfirm.
func ClientConfirmGate(base Baseline) GateFunc {
	return func(obs Observation, now time.Time) Verdict { return ClientConfirm(obs, base, now) }
}

// verdict collects reasons; it passes when no failure was recorded.
type verdict struct {
	failures []string
	warnings []string
}

func (v *verdict) fail(format string, args ...interface{}) {
	v.failures = append(v.failures, fmt.Sprintf(format, args...))
}

func (v *verdict) warn(format string, args ...interface{}) {
	v.warnings = append(v.warnings, fmt.Sprintf(format, args...))
}

func (v *verdict) result() Verdict {
	if len(v.failures) > 0 {
		return Verdict{Pass: false, Reasons: v.failures}
	}
	return Verdict{Pass: true, Reasons: v.warnings}
}

// Preflight decides whether the observed node may go down now.
//
// A server may go down only if autopilot reports the cluster healthy with a failure tolerance of at
// least 1 (policy.AllowSingleServer lets a one-server cluster through, with a reason saying it will be
// down), every server agrees on the same non-empty leader, and every raft server is a voter. A client
// may go down when its agent knows a leader.
func Preflight(obs Observation, policy Policy) Verdict {
	var v verdict
	if obs.Local.NodeName == "" {
		v.fail("the local agent did not answer")
		return v.result()
	}
	if !obs.Local.Server {
		checkLocalLeader(&v, obs)
		return v.result()
	}

	voters := 0
	if obs.Raft == nil {
		v.fail("the raft configuration could not be read: %s", orUnknown(obs.RaftError))
	} else {
		for _, s := range obs.Raft.Servers {
			if s.Voter {
				voters++
				continue
			}
			v.fail("server %s is not a voter yet (autopilot has not promoted it)", serverName(s))
		}
	}

	if obs.Autopilot == nil {
		v.fail("autopilot health could not be read: %s", orUnknown(obs.AutopilotError))
	} else {
		ap := obs.Autopilot
		single := len(ap.Servers) <= 1 && voters <= 1
		if !ap.Healthy {
			v.fail("autopilot reports the cluster unhealthy%s", unhealthyServers(ap))
		}
		switch {
		case ap.FailureTolerance >= 1:
		case single && policy.AllowSingleServer:
			v.warn("single-server cluster: there will be no leader and no writes while this server restarts")
		case single:
			v.fail("single-server cluster: failure tolerance is 0 and restarting the only server takes the cluster down (allow it explicitly to proceed)")
		default:
			v.fail("failure tolerance is %d: taking a server down now could lose quorum (need at least 1)", ap.FailureTolerance)
		}
	}

	checkServersAgree(&v, obs, 0)
	checkServerMembers(&v, obs)
	return v.result()
}

// ServerConfirm decides whether a restarted server is back: (1) the local agent reports the target
// version; (2) every server agrees on the same non-empty leader and at least base.Servers answered;
// (3) this node is a voter in the raft configuration; (4) autopilot is healthy with a failure tolerance
// of at least base.FailureTolerance; (5) the consistent write probe succeeded; (6) this server has caught
// up: its applied index reached the leader's commit index sampled just before it (within MaxIndexLag),
// or, when the leader's stats are unknown, autopilot's LastIndex is within MaxIndexLag of the leader's,
// and as a follower it heard from the leader within MaxLastContact.
//
// Autopilot alone cannot see a quick restart (its data refreshes about every 2s and a follower back
// within a second keeps its Healthy and StableSince), so (6) is judged from the server's own raft stats.
func ServerConfirm(obs Observation, base Baseline, now time.Time) Verdict {
	var v verdict
	if !checkLocal(&v, obs, base, now) {
		return v.result()
	}
	if !obs.Local.Server {
		v.fail("the local agent %s runs as a client, expected a server", obs.Local.NodeName)
	}
	node := obs.Local.NodeName

	checkServersAgree(&v, obs, base.Servers)

	if obs.Raft == nil {
		v.fail("the raft configuration could not be read: %s", orUnknown(obs.RaftError))
	} else {
		self, found := RaftServer{}, false
		for _, s := range obs.Raft.Servers {
			if s.Node == node {
				self, found = s, true
			}
		}
		switch {
		case !found:
			v.fail("this server (%s) is not in the raft configuration", node)
		case !self.Voter:
			v.fail("this server (%s) is in the raft configuration as a non-voter: autopilot has not promoted it yet", node)
		}
		if base.Servers > 0 && len(obs.Raft.Servers) < base.Servers {
			v.fail("the raft configuration has %d servers, %d before the upgrade", len(obs.Raft.Servers), base.Servers)
		}
	}

	if obs.Autopilot == nil {
		v.fail("autopilot health could not be read: %s", orUnknown(obs.AutopilotError))
	} else {
		ap := obs.Autopilot
		if !ap.Healthy {
			v.fail("autopilot reports the cluster unhealthy%s", unhealthyServers(ap))
		}
		if ap.FailureTolerance < base.FailureTolerance {
			v.fail("failure tolerance is %d, it was %d before the upgrade", ap.FailureTolerance, base.FailureTolerance)
		}
		if sh, ok := autopilotServer(ap, node); !ok {
			v.fail("autopilot does not list this server (%s) yet", node)
		} else if !sh.Healthy {
			v.fail("autopilot reports this server (%s) unhealthy", node)
		}
	}

	switch {
	case obs.Probe == nil:
		v.fail("no consistent write probe was made")
	case !obs.Probe.OK:
		v.fail("the consistent write probe failed: %s", orUnknown(obs.Probe.Error))
	}

	checkCaughtUp(&v, obs, base)
	return v.result()
}

// ClientConfirm decides whether a restarted client is back: its agent answers with the target version,
// it is an alive gossip member, and it knows a leader.
func ClientConfirm(obs Observation, base Baseline, now time.Time) Verdict {
	var v verdict
	if !checkLocal(&v, obs, base, now) {
		return v.result()
	}
	node := obs.Local.NodeName
	if obs.MembersError != "" {
		v.fail("the member list could not be read: %s", obs.MembersError)
	} else {
		found := false
		for _, m := range obs.Members {
			if m.Name != node {
				continue
			}
			found = true
			if m.Status != MemberAlive {
				v.fail("this node (%s) is %s in gossip, not alive", node, m.StatusName())
			}
		}
		if !found {
			v.fail("this node (%s) is not in the member list", node)
		}
	}
	checkLocalLeader(&v, obs)
	return v.result()
}

// checkLocal checks the observation's age and the local agent's identity and version. It returns false
// when nothing else is worth checking (the agent did not answer).
func checkLocal(v *verdict, obs Observation, base Baseline, now time.Time) bool {
	maxAge := base.MaxObservationAge
	if maxAge <= 0 {
		maxAge = DefaultMaxObservationAge
	}
	switch {
	case obs.At.IsZero():
		v.fail("the observation carries no time")
	case now.Sub(obs.At) > maxAge:
		v.fail("the observation is stale: taken %s ago (limit %s)", now.Sub(obs.At).Round(time.Millisecond), maxAge)
	}
	if obs.Local.NodeName == "" {
		v.fail("the local agent did not answer")
		return false
	}
	if base.Node != "" && obs.Local.NodeName != base.Node {
		v.fail("the local agent is node %s, expected %s", obs.Local.NodeName, base.Node)
	}
	if !VersionMatches(obs.Local.Version, base.TargetVersion) {
		v.fail("the local agent reports version %s, the target is %s", orUnknown(obs.Local.Version), orUnknown(base.TargetVersion))
	}
	return true
}

// VersionMatches reports whether an agent's reported version is the target. Both are parsed as
// versions ("v1.16.1" equals "1.16.1"); build metadata must match only when the target names it.
func VersionMatches(reported, target string) bool {
	if reported == "" || target == "" {
		return false
	}
	r, err1 := version.NewVersion(reported)
	t, err2 := version.NewVersion(target)
	if err1 != nil || err2 != nil {
		return strings.TrimPrefix(reported, "v") == strings.TrimPrefix(target, "v")
	}
	if !r.Equal(t) {
		return false
	}
	return t.Metadata() == "" || t.Metadata() == r.Metadata()
}

func checkLocalLeader(v *verdict, obs Observation) {
	switch {
	case obs.LocalLeaderError != "":
		v.fail("the local agent could not say who the leader is: %s", obs.LocalLeaderError)
	case obs.LocalLeader == "":
		v.fail("the local agent knows no cluster leader")
	}
}

// checkServersAgree requires every known server to answer with the same non-empty leader, and, when
// atLeast > 0, at least that many servers to answer so.
func checkServersAgree(v *verdict, obs Observation, atLeast int) {
	if !obs.PeersQueried {
		v.fail("the servers were not asked individually who the leader is, so agreement is unknown")
		return
	}
	if len(obs.ServerLeaders) == 0 {
		v.fail("no servers are known (members: %s; raft: %s)", orNone(obs.MembersError), orNone(obs.RaftError))
		return
	}
	byLeader := map[string][]string{}
	agreeing := 0
	for _, s := range obs.ServerLeaders {
		switch {
		case s.Error != "":
			v.fail("server %s did not answer who the leader is: %s", s.Node, s.Error)
		case s.Leader == "":
			v.fail("server %s reports no leader", s.Node)
		default:
			byLeader[s.Leader] = append(byLeader[s.Leader], s.Node)
		}
	}
	if len(byLeader) > 1 {
		leaders := make([]string, 0, len(byLeader))
		for l := range byLeader {
			leaders = append(leaders, l)
		}
		sort.Strings(leaders)
		parts := make([]string, 0, len(leaders))
		for _, l := range leaders {
			parts = append(parts, fmt.Sprintf("%s say %s", strings.Join(byLeader[l], ", "), l))
		}
		v.fail("servers disagree on the leader: %s", strings.Join(parts, "; "))
	}
	if len(byLeader) == 1 {
		for _, nodes := range byLeader {
			agreeing = len(nodes)
		}
	}
	if atLeast > 0 && agreeing < atLeast {
		v.fail("only %d servers agree on a leader, %d were there before the upgrade", agreeing, atLeast)
	}
}

// checkServerMembers fails for server members gossip marks failed or leaving.
func checkServerMembers(v *verdict, obs Observation) {
	if obs.MembersError != "" {
		v.fail("the member list could not be read: %s", obs.MembersError)
		return
	}
	for _, m := range obs.Members {
		if m.Role == "server" && (m.Status == MemberFailed || m.Status == MemberLeaving) {
			v.fail("server %s is %s in gossip", m.Name, m.StatusName())
		}
	}
}

// checkCaughtUp is condition (6) of ServerConfirm.
func checkCaughtUp(v *verdict, obs Observation, base Baseline) {
	node := obs.Local.NodeName
	r := obs.Local.Raft
	if r == nil {
		v.fail("this server (%s) reported no raft stats", node)
		return
	}
	lag := base.MaxIndexLag
	if lag == 0 {
		lag = DefaultMaxIndexLag
	}
	maxContact := base.MaxLastContact
	if maxContact <= 0 {
		maxContact = DefaultMaxLastContact
	}
	switch r.State {
	case "Leader":
		return // the leader's log is the reference
	case "Follower":
	default:
		v.fail("this server (%s) is in raft state %s, not a follower or the leader", node, orUnknown(r.State))
		return
	}

	if d, ok := r.LastContactDuration(); !ok {
		v.fail("this server (%s) has not heard from a leader since it started (last contact %s)", node, orUnknown(r.LastContact))
	} else if d > maxContact {
		v.fail("this server (%s) last heard from the leader %s ago (limit %s)", node, d, maxContact)
	}

	if obs.LeaderRaft != nil {
		if r.AppliedIndex+lag < obs.LeaderRaft.CommitIndex {
			v.fail("this server (%s) has not caught up: applied index %d, the leader had committed %d (allowed lag %d)",
				node, r.AppliedIndex, obs.LeaderRaft.CommitIndex, lag)
		}
		return
	}
	// The leader's own stats are unknown: fall back to autopilot's view, which may be ~2s old.
	if obs.Autopilot == nil {
		v.fail("cannot tell whether this server (%s) has caught up: the leader's raft stats are unavailable (%s) and so is autopilot",
			node, orUnknown(obs.LeaderRaftError))
		return
	}
	self, okSelf := autopilotServer(obs.Autopilot, node)
	var leader ServerHealth
	okLeader := false
	for _, s := range obs.Autopilot.Servers {
		if s.Leader {
			leader, okLeader = s, true
		}
	}
	if !okSelf || !okLeader {
		v.fail("cannot tell whether this server (%s) has caught up: the leader's raft stats are unavailable (%s) and autopilot lists no entry for it or for the leader",
			node, orUnknown(obs.LeaderRaftError))
		return
	}
	if self.LastIndex+lag < leader.LastIndex {
		v.fail("this server (%s) has not caught up: autopilot reports its last index %d, the leader's %d (allowed lag %d)",
			node, self.LastIndex, leader.LastIndex, lag)
	}
}

func autopilotServer(ap *AutopilotHealth, node string) (ServerHealth, bool) {
	for _, s := range ap.Servers {
		if s.Name == node {
			return s, true
		}
	}
	return ServerHealth{}, false
}

func unhealthyServers(ap *AutopilotHealth) string {
	var names []string
	for _, s := range ap.Servers {
		if !s.Healthy {
			names = append(names, fmt.Sprintf("%s (serf %s)", s.Name, orUnknown(s.SerfStatus)))
		}
	}
	if len(names) == 0 {
		return ""
	}
	return ": unhealthy " + strings.Join(names, ", ")
}

func serverName(s RaftServer) string {
	if s.Node != "" && s.Node != "(unknown)" {
		return s.Node
	}
	return s.Address
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "ok"
	}
	return s
}
