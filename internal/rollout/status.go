package rollout

import (
	"encoding/json"
	"fmt"
	"time"
)

// Node roles.
const (
	RoleServer = "server"
	RoleClient = "client"
)

// NodeState is where a node is in its upgrade.
type NodeState string

// Node states, in the order a node normally passes through them.
const (
	StateIdle          NodeState = "idle"           // no target, or the agent just started
	StateUpToDate      NodeState = "up-to-date"     // runs the target version already
	StateInvalidTarget NodeState = "invalid-target" // the target key holds something it cannot use
	StateStaging       NodeState = "staging"        // downloading and verifying the release
	StateStaged        NodeState = "staged"         // verified binary next to the live one
	StateWaiting       NodeState = "waiting"        // for a gate, the lock, the servers, or to be the last leader
	StateLocked        NodeState = "locked"         // holds the semaphore, about to swap
	StateRestarting    NodeState = "restarting"     // binary swapped, agent restarting
	StateConfirming    NodeState = "confirming"     // holding the health gates for the stabilization window
	StateDone          NodeState = "done"           // upgraded and confirmed healthy; lock released
	StateRollingBack   NodeState = "rolling-back"   // putting the previous binary back
	StateFailed        NodeState = "failed"         // rolled back (or could not), halted the rollout
	StateBlocked       NodeState = "blocked"        // paused or halted: will not start
	// StateUnknown is never written: ListNodeStatus uses it for a record it cannot decode.
	StateUnknown NodeState = "unknown"
)

// NodeStatus is the content of `<prefix><product>/nodes/<node>`, written only by that node's upgrader.
type NodeStatus struct {
	Node string `json:"node"`
	Role string `json:"role"` // RoleServer or RoleClient
	// Version is the version the local agent runs now; Target the version this node is working towards.
	Version string    `json:"version,omitempty"`
	Target  string    `json:"target,omitempty"`
	State   NodeState `json:"state"`
	// Step is a free-form detail of State, e.g. "waiting for lock" or "gate: failure tolerance 0 < 1".
	Step string `json:"step,omitempty"`
	// Since is when State began; Updated when the record was last written.
	Since   time.Time `json:"since,omitzero"`
	Updated time.Time `json:"updated,omitzero"`
	// LastError is the most recent error, kept after recovery so operators can see what happened.
	LastError string `json:"last_error,omitempty"`
	// RollbackVersion is the version kept as the rollback copy while an upgrade is in flight.
	RollbackVersion string `json:"rollback_version,omitempty"`
	// Session is the lock session this node holds or last held.
	Session string `json:"session,omitempty"`
}

// Transition returns s moved to state with step at now: Since moves only when the state changes, so the
// table shows how long a node has been in a state, not since its last heartbeat write. Pure.
func (s NodeStatus) Transition(state NodeState, step string, now time.Time) NodeStatus {
	if s.State != state || s.Since.IsZero() {
		s.Since = now
	}
	s.State = state
	s.Step = step
	s.Updated = now
	return s
}

// SameAs reports whether o says the same as s to an operator: every field but the Updated time.
func (s NodeStatus) SameAs(o NodeStatus) bool {
	s.Updated, o.Updated = time.Time{}, time.Time{}
	return s == o
}

func decodeNodeStatus(key string, b []byte) (NodeStatus, error) {
	var s NodeStatus
	if err := json.Unmarshal(b, &s); err != nil {
		return NodeStatus{}, fmt.Errorf("failed to decode node status %s: %w", key, err)
	}
	return s, nil
}
