package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/consul/api"
)

// ReadControl reads the control record with a consistent read (a node checks it right before taking its
// lock, so a stale "running" must not slip through). A missing key is Running with index 0. The index is
// the ModifyIndex to pass to SetControl.
func (s *Store) ReadControl(ctx context.Context) (Control, uint64, error) {
	pair, _, err := s.kv.Get(s.keys.Control(), (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return Control{}, 0, fmt.Errorf("failed to read control %s: %w", s.keys.Control(), markPermanent(err))
	}
	if pair == nil {
		return Control{State: Running}, 0, nil
	}
	c, err := ParseControl(pair.Value)
	if err != nil {
		return Control{}, pair.ModifyIndex, err
	}
	return c, pair.ModifyIndex, nil
}

// WatchControl blocks until the control key changes after waitIndex (0: read now), with WatchTarget's
// blocking-query rules. A missing key is Running.
func (s *Store) WatchControl(ctx context.Context, waitIndex uint64) (Control, uint64, error) {
	pair, idx, err := s.watchKey(ctx, s.keys.Control(), waitIndex)
	if err != nil {
		return Control{}, waitIndex, err
	}
	if pair == nil {
		return Control{State: Running}, idx, nil
	}
	c, err := ParseControl(pair.Value)
	return c, idx, err
}

// SetControl writes c if the control key's ModifyIndex is still modifyIndex (0: only if missing). It
// returns ErrConflict when someone else wrote first; the caller re-reads and decides again.
func (s *Store) SetControl(ctx context.Context, c Control, modifyIndex uint64) error {
	switch c.State {
	case Running, Paused, Halted:
	default:
		return fmt.Errorf("control: unknown state %q: write running, paused or halted", c.State)
	}
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("failed to encode control: %w", err)
	}
	ok, _, err := s.kv.CAS(&api.KVPair{Key: s.keys.Control(), Value: b, ModifyIndex: modifyIndex},
		(&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("failed to write control %s: %w", s.keys.Control(), markPermanent(err))
	}
	if !ok {
		return fmt.Errorf("failed to write control %s: %w", s.keys.Control(), ErrConflict)
	}
	return nil
}

// Halt marks the rollout halted by node's failure. It never overwrites an existing halt: the first
// failure's node and reason stay. It returns the control now in force and whether this call set it.
func (s *Store) Halt(ctx context.Context, node, reason string) (Control, bool, error) {
	return s.changeControl(ctx, func(cur Control) (Control, bool, error) {
		next, write := haltDecision(cur, node, reason, s.clock.Now())
		return next, write, nil
	})
}

// Pause stops new nodes from starting; an in-flight node finishes. It refuses (ErrHalted) to turn a halt
// into a pause, which would hide the failure.
func (s *Store) Pause(ctx context.Context, by, reason string) (Control, bool, error) {
	return s.changeControl(ctx, func(cur Control) (Control, bool, error) {
		return pauseDecision(cur, by, reason, s.clock.Now())
	})
}

// Resume sets the rollout running again (after a pause or a halt), recording who and why.
func (s *Store) Resume(ctx context.Context, by, reason string) (Control, bool, error) {
	return s.changeControl(ctx, func(cur Control) (Control, bool, error) {
		next, write := resumeDecision(cur, by, reason, s.clock.Now())
		return next, write, nil
	})
}

func (s *Store) changeControl(ctx context.Context, decide func(Control) (Control, bool, error)) (Control, bool, error) {
	var result Control
	var wrote bool
	err := s.update(ctx, s.keys.Control(), func(pair *api.KVPair) ([]byte, bool, error) {
		cur := Control{State: Running}
		if pair != nil {
			c, err := ParseControl(pair.Value)
			if err != nil {
				// An unreadable control must not block a halt or a resume: overwrite it.
				s.logger.Warn("overwriting unreadable control record", "key", s.keys.Control(), "error", err)
			} else {
				cur = c
			}
		}
		next, write, err := decide(cur)
		result, wrote = next, write
		if err != nil || !write {
			return nil, false, err
		}
		b, err := json.Marshal(next)
		if err != nil {
			return nil, false, fmt.Errorf("failed to encode control: %w", err)
		}
		return b, true, nil
	})
	if err != nil {
		return Control{}, false, err
	}
	return result, wrote, nil
}

// PutNodeStatus writes a node's own status record, stamping Updated with the clock. Each node writes only
// its own key, so no check-and-set is needed.
func (s *Store) PutNodeStatus(ctx context.Context, st NodeStatus) error {
	if err := checkSegment("node", st.Node); err != nil {
		return err
	}
	if st.Role != RoleServer && st.Role != RoleClient {
		return fmt.Errorf("rollout: node %s has role %q: want %s or %s", st.Node, st.Role, RoleServer, RoleClient)
	}
	st.Updated = s.clock.Now()
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("failed to encode status of %s: %w", st.Node, err)
	}
	if _, err := s.kv.Put(&api.KVPair{Key: s.keys.Node(st.Node), Value: b}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("failed to write status of %s: %w", st.Node, markPermanent(err))
	}
	return nil
}

// GetNodeStatus reads one node's status; found is false when the node has never written one.
func (s *Store) GetNodeStatus(ctx context.Context, node string) (st NodeStatus, found bool, err error) {
	if err := checkSegment("node", node); err != nil {
		return NodeStatus{}, false, err
	}
	pair, _, err := s.kv.Get(s.keys.Node(node), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return NodeStatus{}, false, fmt.Errorf("failed to read status of %s: %w", node, markPermanent(err))
	}
	if pair == nil {
		return NodeStatus{}, false, nil
	}
	st, err = decodeNodeStatus(pair.Key, pair.Value)
	return st, err == nil, err
}

// ListNodeStatus returns every node's status, sorted by node name. A record that cannot be decoded is
// returned as StateUnknown with the decode error in LastError, so one bad record hides nothing else.
func (s *Store) ListNodeStatus(ctx context.Context) ([]NodeStatus, error) {
	prefix := s.keys.NodesPrefix()
	pairs, _, err := s.kv.List(prefix, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("failed to list node statuses under %s: %w", prefix, markPermanent(err))
	}
	out := make([]NodeStatus, 0, len(pairs))
	for _, p := range pairs {
		name := strings.TrimPrefix(p.Key, prefix)
		if name == "" || strings.Contains(name, "/") {
			continue // not a node record (a folder marker or a deeper key someone added)
		}
		st, err := decodeNodeStatus(p.Key, p.Value)
		if err != nil {
			st = NodeStatus{State: StateUnknown, LastError: err.Error()}
		}
		st.Node = name // the key is authoritative
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out, nil
}

// ReadRollout reads the current rollout record; ErrNoRollout when there is none.
func (s *Store) ReadRollout(ctx context.Context) (Rollout, error) {
	pair, _, err := s.kv.Get(s.keys.Rollout(), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return Rollout{}, fmt.Errorf("failed to read %s: %w", s.keys.Rollout(), markPermanent(err))
	}
	if pair == nil {
		return Rollout{}, ErrNoRollout
	}
	return decodeRollout(pair.Value)
}

// StartRollout makes the rollout of t (read at targetIndex, the target key's ModifyIndex) the current
// one and returns it. Every node may call it: the first creates the record, the rest get the same one
// back. An unfinished older rollout is closed as superseded and archived to history. A call for an older
// target than the current rollout's returns ErrRolloutMismatch (the caller read a stale target).
func (s *Store) StartRollout(ctx context.Context, t Target, targetIndex uint64) (Rollout, error) {
	id := RolloutID(t.Version, targetIndex)
	var result Rollout
	err := s.update(ctx, s.keys.Rollout(), func(pair *api.KVPair) ([]byte, bool, error) {
		now := s.clock.Now()
		if pair != nil {
			cur, err := decodeRollout(pair.Value)
			switch {
			case err != nil:
				s.logger.Warn("replacing unreadable rollout record", "key", pair.Key, "error", err)
			case cur.ID == id:
				result = cur
				return nil, false, nil
			case cur.TargetIndex > targetIndex:
				return nil, false, fmt.Errorf("%w: %s is older than the current rollout %s", ErrRolloutMismatch, id, cur.ID)
			case !cur.Finished():
				cur.FinishedAt, cur.SupersededBy = now, id
				if err := s.putHistory(ctx, cur); err != nil {
					return nil, false, err
				}
			}
		}
		result = Rollout{ID: id, TargetIndex: targetIndex, Target: t, StartedAt: now, Outcomes: map[string]Outcome{}}
		b, err := json.Marshal(result)
		return b, err == nil, err
	})
	if err != nil {
		return Rollout{}, err
	}
	return result, nil
}

// RecordOutcome stores node's outcome in rollout id. A finished rollout's history copy is updated too,
// so a late report is not lost.
func (s *Store) RecordOutcome(ctx context.Context, id, node string, o Outcome) (Rollout, error) {
	if err := checkSegment("node", node); err != nil {
		return Rollout{}, err
	}
	if o.At.IsZero() {
		o.At = s.clock.Now()
	}
	return s.changeRollout(ctx, id, func(r *Rollout) bool {
		if r.Outcomes == nil {
			r.Outcomes = map[string]Outcome{}
		}
		r.Outcomes[node] = o
		return true
	})
}

// RecordSnapshot stores where the pre-upgrade snapshot of rollout id was saved.
func (s *Store) RecordSnapshot(ctx context.Context, id string, snap Snapshot) (Rollout, error) {
	if snap.At.IsZero() {
		snap.At = s.clock.Now()
	}
	return s.changeRollout(ctx, id, func(r *Rollout) bool {
		r.Snapshot = &snap
		return true
	})
}

// FinishRollout closes rollout id and archives it under history/<id>. Calling it again is harmless.
func (s *Store) FinishRollout(ctx context.Context, id string) (Rollout, error) {
	return s.changeRollout(ctx, id, func(r *Rollout) bool {
		if r.Finished() {
			return false
		}
		r.FinishedAt = s.clock.Now()
		return true
	})
}

// changeRollout applies change to the current record if it is rollout id, writes it with check-and-set,
// and keeps the history copy of a finished record in step.
func (s *Store) changeRollout(ctx context.Context, id string, change func(*Rollout) bool) (Rollout, error) {
	var result Rollout
	err := s.update(ctx, s.keys.Rollout(), func(pair *api.KVPair) ([]byte, bool, error) {
		if pair == nil {
			return nil, false, fmt.Errorf("%w (wanted %s)", ErrNoRollout, id)
		}
		r, err := decodeRollout(pair.Value)
		if err != nil {
			return nil, false, err
		}
		if r.ID != id {
			return nil, false, fmt.Errorf("%w: %s is not the current rollout %s", ErrRolloutMismatch, id, r.ID)
		}
		write := change(&r)
		result = r
		if r.Finished() {
			// Idempotent, and before the check-and-set: a crash in between leaves history ahead of the
			// current record, never behind it.
			if err := s.putHistory(ctx, r); err != nil {
				return nil, false, err
			}
		}
		if !write {
			return nil, false, nil
		}
		b, err := json.Marshal(r)
		return b, err == nil, err
	})
	if err != nil {
		return Rollout{}, err
	}
	return result, nil
}

func (s *Store) putHistory(ctx context.Context, r Rollout) error {
	if err := checkSegment("rollout id", r.ID); err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("failed to encode rollout %s: %w", r.ID, err)
	}
	if _, err := s.kv.Put(&api.KVPair{Key: s.keys.History(r.ID), Value: b}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("failed to archive rollout %s: %w", r.ID, markPermanent(err))
	}
	return nil
}

// ListHistory returns the finished rollouts, oldest first by start time.
func (s *Store) ListHistory(ctx context.Context) ([]Rollout, error) {
	pairs, _, err := s.kv.List(s.keys.HistoryPrefix(), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("failed to list history: %w", markPermanent(err))
	}
	var out []Rollout
	var errs []error
	for _, p := range pairs {
		r, err := decodeRollout(p.Value)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p.Key, err))
			continue
		}
		out = append(out, r)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].StartedAt.Before(out[j].StartedAt) })
	return out, errors.Join(errs...)
}
