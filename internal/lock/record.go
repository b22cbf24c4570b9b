package lock

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// The semaphore's layout in KV is api.Semaphore's, so `consul lock -n` and api.Semaphore users interoperate:
//
//	<prefix>.lock       {"Limit":N,"Holders":{"<session>":true,...}}, flags SemaphoreFlagValue, written by CAS
//	<prefix><session>   a contender entry acquired by that session, value = Options.Value
//
// A holder is live while its contender entry is held by its session; a listed holder without one is dead
// and is pruned (after LockDelay, see decide) by the next contender that writes the record.

// lockKeyName is the coordination key inside the prefix.
const lockKeyName = api.DefaultSemaphoreKey

// record is the JSON document stored in <prefix>.lock.
type record struct {
	Limit   int
	Holders map[string]bool
}

// state is what one read of the prefix says. Built by readState, pure.
type state struct {
	lockPair   *api.KVPair            // the .lock entry; nil if absent
	rec        record                 // decoded record (Limit = ours, no holders, when absent)
	live       map[string]bool        // sessions that hold any key under the prefix
	contenders map[string]*api.KVPair // direct children written as contender entries, by session id
}

// lockIndex is the ModifyIndex to CAS against (0: create only if absent).
func (s state) lockIndex() uint64 {
	if s.lockPair == nil {
		return 0
	}
	return s.lockPair.ModifyIndex
}

// holds reports whether session is a listed and live holder.
func (s state) holds(session string) bool {
	return session != "" && s.rec.Holders[session] && s.live[session]
}

// holderList returns the listed holders, sorted, for logs and errors.
func (s state) holderList() []string {
	out := make([]string, 0, len(s.rec.Holders))
	for h := range s.rec.Holders {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

// readState decodes a recursive read of prefix. Pure.
func readState(prefix string, pairs api.KVPairs, limit int) (state, error) {
	st := state{
		rec:        record{Limit: limit, Holders: map[string]bool{}},
		live:       map[string]bool{},
		contenders: map[string]*api.KVPair{},
	}
	lockKey := prefix + lockKeyName
	for _, p := range pairs {
		if p == nil {
			continue
		}
		if p.Session != "" {
			st.live[p.Session] = true
		}
		if p.Key == lockKey {
			st.lockPair = p
			continue
		}
		name := strings.TrimPrefix(p.Key, prefix)
		if name != p.Key && name != "" && !strings.Contains(name, "/") && p.Flags == api.SemaphoreFlagValue {
			st.contenders[name] = p
		}
	}
	if st.lockPair == nil {
		return st, nil
	}
	if st.lockPair.Flags != api.SemaphoreFlagValue {
		return st, fmt.Errorf("%w: %s has flags %#x", ErrNotSemaphore, lockKey, st.lockPair.Flags)
	}
	if len(st.lockPair.Value) == 0 {
		return st, nil
	}
	var rec record
	if err := json.Unmarshal(st.lockPair.Value, &rec); err != nil {
		return st, fmt.Errorf("%w: failed to decode %s: %w", ErrNotSemaphore, lockKey, err)
	}
	if rec.Holders == nil {
		rec.Holders = map[string]bool{}
	}
	st.rec = rec
	return st, nil
}

// encodeRecord builds the CAS write of rec at index. Pure.
func encodeRecord(prefix string, rec record, index uint64) (*api.KVPair, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("failed to encode the semaphore record: %w", err)
	}
	return &api.KVPair{Key: prefix + lockKeyName, Value: b, Flags: api.SemaphoreFlagValue, ModifyIndex: index}, nil
}

// noteDead returns when each currently dead holder (listed, not live, not self) was first seen dead,
// keeping earlier observations from prev. Pure.
func noteDead(prev map[string]time.Time, st state, self string, now time.Time) map[string]time.Time {
	out := make(map[string]time.Time)
	for h := range st.rec.Holders {
		if h == self || st.live[h] {
			continue
		}
		if since, ok := prev[h]; ok {
			out[h] = since
		} else {
			out[h] = now
		}
	}
	return out
}

type verdict int

const (
	verdictWait verdict = iota // full: wait for a change (or retryIn)
	verdictTake                // CAS next into .lock
	verdictHeld                // already a live holder (re-entry after a resume)
)

func (v verdict) String() string {
	return [...]string{"wait", "take", "held"}[v]
}

// decision is what the contender should do after one read.
type decision struct {
	verdict verdict
	next    record        // verdictTake: the record to write (pruned, plus self)
	pruned  []string      // dead holders dropped from next, sorted
	retryIn time.Duration // verdictWait: dead holders still in their lock-delay become prunable after this
	stale   []*api.KVPair // dead contender entries the record no longer lists: safe to delete (DeleteCAS)
}

// decide turns one read into the next step for session self. deadSince comes from noteDead on the same
// read. A dead holder frees its slot only once it has been seen dead for lockDelay. Pure: no I/O, no clock.
func decide(st state, prefix, self string, limit int, deadSince map[string]time.Time, now time.Time, lockDelay time.Duration) (decision, error) {
	if st.lockPair != nil && st.rec.Limit != limit {
		return decision{}, &LimitConflictError{Prefix: prefix, Theirs: st.rec.Limit, Ours: limit}
	}
	d := decision{}
	keep := map[string]bool{} // holders that still count: live ones and dead ones in their lock-delay
	for h := range st.rec.Holders {
		switch {
		case h == self:
		case st.live[h]:
			keep[h] = true
		default:
			since, ok := deadSince[h]
			if !ok {
				since = now
			}
			if left := lockDelay - now.Sub(since); left > 0 {
				keep[h] = true
				if d.retryIn == 0 || left < d.retryIn {
					d.retryIn = left
				}
			} else {
				d.pruned = append(d.pruned, h)
			}
		}
	}
	sort.Strings(d.pruned)
	for name, p := range st.contenders {
		if p.Session == "" && name != self && !st.rec.Holders[name] {
			d.stale = append(d.stale, p)
		}
	}
	sort.Slice(d.stale, func(i, j int) bool { return d.stale[i].Key < d.stale[j].Key })

	switch {
	case st.holds(self):
		d.verdict = verdictHeld
		d.pruned, d.retryIn = nil, 0
	case len(keep) < limit:
		d.verdict = verdictTake
		d.next = record{Limit: limit, Holders: map[string]bool{self: true}}
		for h := range keep {
			d.next.Holders[h] = true
		}
		d.retryIn = 0
	default:
		d.verdict = verdictWait
		d.pruned = nil // nothing is written while waiting
	}
	return d, nil
}

// withoutHolder returns rec minus session (for Release). Pure.
func withoutHolder(rec record, session string) record {
	out := record{Limit: rec.Limit, Holders: make(map[string]bool, len(rec.Holders))}
	for h, v := range rec.Holders {
		if h != session {
			out.Holders[h] = v
		}
	}
	return out
}

// nextWaitIndex applies Consul's blocking-query index rules: reset when the index goes backwards (a
// snapshot restore, a new leader), and use 1 instead of 0 so that the next query still blocks.
func nextWaitIndex(prev, last uint64) uint64 {
	switch {
	case last < prev:
		return 0
	case last == 0:
		return 1
	}
	return last
}
