package agent

import (
	"fmt"
	"sort"
	"strings"

	version "github.com/hashicorp/go-version"

	"github.com/upgrader-dev/upgrader/internal/health"
)

// Action is what the agent should do about the target right now.
type Action string

const (
	ActionIdle       Action = "idle"        // no target set
	ActionInvalid    Action = "invalid"     // the target cannot be parsed
	ActionUpToDate   Action = "up-to-date"  // the local agent already runs the target
	ActionRefuse     Action = "refuse"      // the target is a downgrade that was not allowed
	ActionBlocked    Action = "blocked"     // the rollout is paused or halted
	ActionWaitServer Action = "wait-server" // a client waits until every server runs the target
	ActionWaitLeader Action = "wait-leader" // the leader waits until every other server runs the target
	ActionUpgrade    Action = "upgrade"     // stage, take the lock, swap, restart, confirm
)

// Inputs is everything Decide looks at, gathered beforehand.
type Inputs struct {
	Target         string // normalized target version; "" when none is set
	TargetErr      error  // why the target key could not be parsed, if it could not
	AllowDowngrade bool
	Control        string // "running", "paused" or "halted" ("" means running)
	ControlReason  string

	Node         string
	Server       bool
	LocalVersion string // version the local agent reports
	IsLeader     bool   // the local agent is the current raft leader
	Members      []health.Member
	// ServersBusy: a server holds the server lock (clients only; read when every server runs the target).
	ServersBusy bool
}

// Plan is Decide's answer.
type Plan struct {
	Action Action
	Reason string
	// Pending names the servers that do not run the target yet (used by wait-server and wait-leader).
	Pending []string
}

// Decide turns gathered inputs into what to do next. It is pure: no network calls, no clock, never
// blocks. It is called at every step (never once up front), because the leader and the versions of
// the other servers change while a rollout runs (FAULTS F2).
func Decide(in Inputs) Plan {
	if in.TargetErr != nil {
		return Plan{Action: ActionInvalid, Reason: in.TargetErr.Error()}
	}
	if in.Target == "" {
		return Plan{Action: ActionIdle, Reason: "no target version set"}
	}
	cmp, err := compareVersions(in.LocalVersion, in.Target)
	if err != nil {
		return Plan{Action: ActionInvalid, Reason: err.Error()}
	}
	if cmp == 0 {
		return Plan{Action: ActionUpToDate, Reason: fmt.Sprintf("already running %s", in.Target)}
	}
	if cmp > 0 && !in.AllowDowngrade {
		return Plan{Action: ActionRefuse, Reason: fmt.Sprintf("target %s is older than the running %s: a downgrade needs \"allow_downgrade\": true in the target", in.Target, in.LocalVersion)}
	}
	switch in.Control {
	case "", "running":
	default:
		reason := fmt.Sprintf("rollout is %s", in.Control)
		if in.ControlReason != "" {
			reason += ": " + in.ControlReason
		}
		return Plan{Action: ActionBlocked, Reason: reason}
	}

	pending := pendingServers(in.Members, in.Target, in.Node)
	if !in.Server {
		if len(pending) > 0 {
			return Plan{Action: ActionWaitServer, Pending: pending,
				Reason: fmt.Sprintf("clients go after every server runs %s; waiting for %s", in.Target, strings.Join(pending, ", "))}
		}
		if in.ServersBusy {
			return Plan{Action: ActionWaitServer,
				Reason: "clients go after the last server is confirmed healthy; a server still holds the server lock"}
		}
		return Plan{Action: ActionUpgrade, Reason: fmt.Sprintf("upgrade client %s -> %s", in.LocalVersion, in.Target)}
	}
	if in.IsLeader && len(pending) > 0 {
		return Plan{Action: ActionWaitLeader, Pending: pending,
			Reason: fmt.Sprintf("this server is the leader and goes last; waiting for %s", strings.Join(pending, ", "))}
	}
	return Plan{Action: ActionUpgrade, Reason: fmt.Sprintf("upgrade server %s -> %s", in.LocalVersion, in.Target)}
}

// pendingServers lists the servers other than self that are not alive on the target version.
func pendingServers(members []health.Member, target, self string) []string {
	var out []string
	for _, m := range members {
		if m.Role != "server" || m.Name == self {
			continue
		}
		if m.Status == health.MemberLeft {
			continue // a server that left the cluster on purpose is no longer part of the rollout
		}
		if m.Status != health.MemberAlive || !sameVersion(m.Version, target) {
			out = append(out, m.Name)
		}
	}
	sort.Strings(out)
	return out
}

func compareVersions(local, target string) (int, error) {
	lv, err := version.NewVersion(local)
	if err != nil {
		return 0, fmt.Errorf("failed to parse the local agent's version %q: %w", local, err)
	}
	tv, err := version.NewVersion(target)
	if err != nil {
		return 0, fmt.Errorf("failed to parse target version %q: %w", target, err)
	}
	return lv.Compare(tv), nil
}

func sameVersion(a, b string) bool {
	c, err := compareVersions(a, b)
	return err == nil && c == 0
}
