package lock

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
)

// kvAPI is the part of the Consul KV API a Lock uses (*api.KV).
type kvAPI interface {
	List(prefix string, q *api.QueryOptions) (api.KVPairs, *api.QueryMeta, error)
	Get(key string, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error)
	Acquire(p *api.KVPair, q *api.WriteOptions) (bool, *api.WriteMeta, error)
	CAS(p *api.KVPair, q *api.WriteOptions) (bool, *api.WriteMeta, error)
	Delete(key string, w *api.WriteOptions) (*api.WriteMeta, error)
	DeleteCAS(p *api.KVPair, q *api.WriteOptions) (bool, *api.WriteMeta, error)
}

// monitor watches the semaphore with consistent blocking queries while it is held. It returns nil when ctx
// is done and the loss reason (wrapping ErrLost) when a consistent read no longer names session as a live
// holder, or when reads keep failing for longer than MonitorGrace. Transient errors (an election, agents
// restarting) are retried with backoff, not treated as a loss.
func (l *Lock) monitor(ctx context.Context, session string) error {
	var index uint64
	lastOK := l.opts.Clock.Now()
	bo := newBackoff()
	for {
		q := &api.QueryOptions{RequireConsistent: true, WaitIndex: index, WaitTime: l.opts.WaitTime}
		pairs, meta, err := l.kv.List(l.opts.Prefix, q.WithContext(ctx))
		if ctx.Err() != nil {
			return nil
		}
		now := l.opts.Clock.Now()
		if err != nil {
			down := now.Sub(lastOK)
			if !isTransient(err) || down >= l.opts.MonitorGrace {
				l.logger.Error("cannot watch the semaphore; treating the lock as lost", "error", err, "for", down)
				return fmt.Errorf("%w (for %s: %w)", ErrUnobservable, down.Round(100*time.Millisecond), err)
			}
			l.logger.Warn("watching the semaphore failed; retrying", "error", err, "for", down)
			index = 0
			if sleep(ctx, l.opts.Clock, bo.next()) != nil {
				return nil
			}
			continue
		}
		lastOK = now
		bo.reset()
		st, err := readState(l.opts.Prefix, pairs, l.opts.Limit)
		if err != nil {
			l.logger.Error("semaphore record unreadable; treating the lock as lost", "error", err)
			return fmt.Errorf("%w: %w", ErrNotHolder, err)
		}
		if !st.holds(session) {
			return l.lossReason(st, session)
		}
		index = nextWaitIndex(index, meta.LastIndex)
	}
}

// lossReason explains why st does not name session as a live holder.
func (l *Lock) lossReason(st state, session string) error {
	listed := st.rec.Holders[session]
	entry := st.contenders[session]
	l.logger.Error("the semaphore no longer names our session as a live holder", "session", session,
		"listed", listed, "holders", st.holderList(), "contender_entry", entry != nil, "contender_live", st.live[session])
	if entry != nil && entry.Session == "" {
		// Only invalidating the session releases its contender entry.
		return fmt.Errorf("%w (session %s was invalidated: its contender entry %s was released)", ErrSessionGone, session, entry.Key)
	}
	if !listed {
		return fmt.Errorf("%w (session %s is not in %s%s; holders now %v)", ErrNotHolder, session, l.opts.Prefix, lockKeyName, st.holderList())
	}
	return fmt.Errorf("%w (session %s is listed but its contender entry %s%s is gone)", ErrNotHolder, session, l.opts.Prefix, session)
}
