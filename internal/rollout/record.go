package rollout

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ErrRolloutMismatch means a write was meant for a rollout that is no longer the current one (a newer
// target started another rollout): the writer is stale and must re-read the target.
var ErrRolloutMismatch = errors.New("rollout: not the current rollout")

// ErrNoRollout means there is no current rollout record.
var ErrNoRollout = errors.New("rollout: no current rollout")

// Rollout is the record of one rollout: `<prefix><product>/rollout` while current, and
// `<prefix><product>/history/<id>` once finished.
type Rollout struct {
	ID string `json:"id"`
	// TargetIndex is the target key's ModifyIndex this rollout was started from.
	TargetIndex uint64    `json:"target_index"`
	Target      Target    `json:"target"`
	StartedAt   time.Time `json:"started_at,omitzero"`
	FinishedAt  time.Time `json:"finished_at,omitzero"`
	// Snapshot is the pre-upgrade Consul snapshot, saved before the first server restarted.
	Snapshot *Snapshot `json:"snapshot,omitempty"`
	// Outcomes is each node's last reported outcome, by node name.
	Outcomes map[string]Outcome `json:"outcomes,omitempty"`
	// SupersededBy names the rollout that replaced this one before it finished.
	SupersededBy string `json:"superseded_by,omitempty"`
}

// Snapshot records where the pre-upgrade snapshot lives.
type Snapshot struct {
	Path string    `json:"path"`
	Node string    `json:"node"` // the node whose disk holds Path
	At   time.Time `json:"at,omitzero"`
}

// Outcome is one node's result within a rollout.
type Outcome struct {
	State NodeState `json:"state"`
	From  string    `json:"from,omitempty"`
	To    string    `json:"to,omitempty"`
	At    time.Time `json:"at,omitzero"`
	Error string    `json:"error,omitempty"`
}

// Finished reports whether the rollout has been closed.
func (r Rollout) Finished() bool { return !r.FinishedAt.IsZero() }

// RolloutID names the rollout of a target from the version and the target key's ModifyIndex, e.g.
// "1.16.1-42": writing the same version again starts a new rollout, and the ID is stable across every
// node that reads the same write.
func RolloutID(version string, targetModifyIndex uint64) string {
	return fmt.Sprintf("%s-%d", version, targetModifyIndex)
}

func decodeRollout(b []byte) (Rollout, error) {
	var r Rollout
	if err := json.Unmarshal(b, &r); err != nil {
		return Rollout{}, fmt.Errorf("failed to decode rollout record: %w", err)
	}
	return r, nil
}
