package rollout

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ControlState is the operator-facing switch of a rollout.
type ControlState string

const (
	// Running lets nodes start their upgrades. A missing control key means Running.
	Running ControlState = "running"
	// Paused lets an in-flight node finish but no new node starts.
	Paused ControlState = "paused"
	// Halted is set by a node whose upgrade failed: nothing starts until an operator resumes.
	Halted ControlState = "halted"
)

// Control is the content of `<prefix><product>/control`.
type Control struct {
	State  ControlState `json:"state"`
	Reason string       `json:"reason,omitempty"`
	// By is who set this state: an operator name, or the node that halted.
	By string    `json:"by,omitempty"`
	At time.Time `json:"at,omitzero"`
	// HaltedBy is the node whose failure halted the rollout (only when State is Halted).
	HaltedBy string `json:"halted_by,omitempty"`
}

// ErrHalted means an operation that must not override a halt (Pause) met one: resume first.
var ErrHalted = errors.New("control: the rollout is halted")

// AllowsStart reports whether a node may start a new upgrade under this control.
func (c Control) AllowsStart() bool { return c.State == Running || c.State == "" }

// String is a one-line summary, e.g. `halted by node-b: gate timed out`.
func (c Control) String() string {
	s := string(c.State)
	if s == "" {
		s = string(Running)
	}
	switch {
	case c.State == Halted && c.HaltedBy != "":
		s += " by " + c.HaltedBy
	case c.By != "":
		s += " by " + c.By
	}
	if c.Reason != "" {
		s += ": " + c.Reason
	}
	return s
}

// ParseControl decodes the control key. Empty content (or a missing key) is Running.
func ParseControl(b []byte) (Control, error) {
	if len(b) == 0 {
		return Control{State: Running}, nil
	}
	var c Control
	if err := json.Unmarshal(b, &c); err != nil {
		return Control{}, fmt.Errorf("control: failed to decode: %w", err)
	}
	switch c.State {
	case Running, Paused, Halted:
	case "":
		c.State = Running
	default:
		return Control{}, fmt.Errorf("control: unknown state %q: write running, paused or halted", c.State)
	}
	return c, nil
}

// haltDecision decides what Halt writes given the current control. It never overwrites an existing halt:
// the first failure's reason is the one operators need. Pure.
func haltDecision(cur Control, node, reason string, now time.Time) (next Control, write bool) {
	if cur.State == Halted {
		return cur, false
	}
	return Control{State: Halted, Reason: reason, By: node, At: now, HaltedBy: node}, true
}

// pauseDecision decides what Pause writes. A pause must not downgrade a halt. Pure.
func pauseDecision(cur Control, by, reason string, now time.Time) (next Control, write bool, err error) {
	switch cur.State {
	case Halted:
		return cur, false, fmt.Errorf("%w by %s (%s): resume it before pausing", ErrHalted, cur.HaltedBy, cur.Reason)
	case Paused:
		return cur, false, nil
	}
	return Control{State: Paused, Reason: reason, By: by, At: now}, true, nil
}

// resumeDecision decides what Resume writes: always Running, recording who resumed and why. Pure.
func resumeDecision(cur Control, by, reason string, now time.Time) (next Control, write bool) {
	if cur.State == Running || cur.State == "" {
		return cur, false
	}
	return Control{State: Running, Reason: reason, By: by, At: now}, true
}
