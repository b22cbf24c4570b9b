package lock

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
)

// contend writes our contender entry and waits for a slot: gather (a blocking read of the prefix), decide
// (pure), act (CAS the record, delete stale entries). It returns nil once session id is a live holder.
func (l *Lock) contend(ctx context.Context, id string, resumed bool) error {
	entry := &api.KVPair{Key: l.opts.Prefix + id, Value: l.opts.Value, Session: id, Flags: api.SemaphoreFlagValue}
	err := retry(ctx, l.opts.Clock, l.onRetry("write contender entry"), func(ctx context.Context) error {
		ok, _, err := l.kv.Acquire(entry, (&api.WriteOptions{}).WithContext(ctx))
		if err == nil && !ok {
			return fmt.Errorf("consul refused contender entry %s for session %s (session invalid?)", entry.Key, id)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("failed to write contender entry: %w", err)
	}

	var (
		index     uint64
		waitTime  = l.opts.WaitTime
		deadSince map[string]time.Time
		bo        = newBackoff()
		logged    string
	)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		q := &api.QueryOptions{WaitIndex: index, WaitTime: waitTime, RequireConsistent: index == 0}
		pairs, meta, err := l.kv.List(l.opts.Prefix, q.WithContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !isTransient(err) {
				return fmt.Errorf("failed to read the semaphore at %s: %w", l.opts.Prefix, err)
			}
			l.logger.Warn("reading the semaphore failed; retrying", "error", err)
			index = 0
			if err := sleep(ctx, l.opts.Clock, bo.next()); err != nil {
				return err
			}
			continue
		}
		bo.reset()
		now := l.opts.Clock.Now()
		st, err := readState(l.opts.Prefix, pairs, l.opts.Limit)
		if err != nil {
			return err
		}
		deadSince = noteDead(deadSince, st, id, now)
		d, err := decide(st, l.opts.Prefix, id, l.opts.Limit, deadSince, now, l.opts.LockDelay)
		if err != nil {
			return err
		}
		l.deleteStale(ctx, d.stale)

		switch d.verdict {
		case verdictHeld:
			if resumed {
				l.logger.Info("re-entered the slot our resumed session already holds", "session", id)
			}
			return nil
		case verdictTake:
			for _, h := range d.pruned {
				l.logger.Warn("pruning dead holder", "session", h, "dead_for", now.Sub(deadSince[h]),
					"value", contenderValue(st, h))
			}
			next, err := encodeRecord(l.opts.Prefix, d.next, st.lockIndex())
			if err != nil {
				return err
			}
			ok, _, err := l.kv.CAS(next, (&api.WriteOptions{}).WithContext(ctx))
			switch {
			case err == nil && ok:
				var gone []*api.KVPair // the pruned holders' dead contender entries, now listed nowhere
				for _, h := range d.pruned {
					if p := st.contenders[h]; p != nil && p.Session == "" {
						gone = append(gone, p)
					}
				}
				l.deleteStale(ctx, gone)
				return nil
			case err != nil && ctx.Err() != nil:
				return ctx.Err()
			case err != nil && !isTransient(err):
				return fmt.Errorf("failed to update the semaphore record: %w", err)
			case err != nil:
				// The write may or may not have landed: re-read and decide again.
				l.logger.Warn("updating the semaphore record failed; re-reading", "error", err)
				if err := sleep(ctx, l.opts.Clock, bo.next()); err != nil {
					return err
				}
			}
			index, waitTime = 0, l.opts.WaitTime // lost a race (or unsure): read again now
		case verdictWait:
			if s := fmt.Sprint(st.holderList()); s != logged {
				logged = s
				l.logger.Info("waiting for a slot", "holders", st.holderList(), "limit", l.opts.Limit)
			}
			index = nextWaitIndex(index, meta.LastIndex)
			waitTime = l.opts.WaitTime
			if d.retryIn > 0 && d.retryIn < waitTime {
				waitTime = d.retryIn + 10*time.Millisecond
			}
		}
	}
}

// deleteStale removes dead contender entries with DeleteCAS (a concurrent change wins). Best effort.
func (l *Lock) deleteStale(ctx context.Context, stale []*api.KVPair) {
	for _, p := range stale {
		ok, _, err := l.kv.DeleteCAS(p, (&api.WriteOptions{}).WithContext(ctx))
		if err != nil {
			l.logger.Debug("failed to delete a stale contender entry", "key", p.Key, "error", err)
			return
		}
		if ok {
			l.logger.Info("deleted stale contender entry", "key", p.Key, "value", string(p.Value))
		}
	}
}

// contenderValue is a holder's contender value for logs.
func contenderValue(st state, session string) string {
	if p := st.contenders[session]; p != nil {
		return string(p.Value)
	}
	return ""
}
