package lock

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// Lock is one holder's slot in a Consul semaphore. Read the package comment for its failure semantics.
// Acquire and Release are serialized; SessionID, Err and StillHeld may be called at any time.
type Lock struct {
	kv       kvAPI
	sessions sessionAPI
	catalog  catalogAPI
	opts     Options
	anchor   string
	logger   hclog.Logger

	op sync.Mutex // serializes Acquire and Release

	mu        sync.Mutex // guards the fields below
	session   string
	created   bool // the session was created by this Lock (not resumed): destroy it when not acquired
	held      bool
	lost      chan struct{}
	lostErr   error
	lostClose context.CancelFunc // cancels sessionCtx when lost closes
	cancel    context.CancelFunc // stops the renewer and the monitor
	wg        sync.WaitGroup
}

// New returns a Lock on c. c should be a failover-capable client (consulconn) so that the session is renewed
// and the semaphore watched through other agents while the local agent restarts.
func New(c *api.Client, opts Options) (*Lock, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: nil consul client", ErrConfig)
	}
	return newLock(c.KV(), c.Session(), c.Catalog(), opts)
}

func newLock(kv kvAPI, sessions sessionAPI, catalog catalogAPI, opts Options) (*Lock, error) {
	o, err := opts.finalize()
	if err != nil {
		return nil, err
	}
	return &Lock{
		kv:       kv,
		sessions: sessions,
		catalog:  catalog,
		opts:     o,
		anchor:   anchorNode(o.Holder),
		logger:   o.Logger.Named("lock").With("prefix", o.Prefix, "holder", o.Holder),
	}, nil
}

// SessionID is the current session ("" before Acquire and after Release). Journal it once Acquire returns,
// to resume with Options.SessionID after a crash.
func (l *Lock) SessionID() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.session
}

// Err says why the lost channel closed (wrapping ErrLost), or nil while it is open.
func (l *Lock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lostErr
}

// Acquire takes a slot, blocking until it is ours, ctx is done, or a permanent error. It returns a channel
// that is closed when the slot is lost or released. Every error wraps ErrNotAcquired; when not acquired, a
// session created by this call is destroyed again (a resumed one is left to expire, so that a failed
// re-entry never frees a slot a crashed holder still needs).
func (l *Lock) Acquire(ctx context.Context) (<-chan struct{}, error) {
	l.op.Lock()
	defer l.op.Unlock()
	l.mu.Lock()
	busy := l.held || l.session != ""
	l.mu.Unlock()
	if busy {
		return nil, notAcquired(ErrHeld)
	}
	lost, err := l.acquire(ctx)
	if err == nil {
		return lost, nil
	}
	l.stopWorkers()
	l.mu.Lock()
	id, created := l.session, l.created
	l.mu.Unlock()
	if id != "" {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.opts.CleanupTimeout)
		defer cancel()
		if created {
			if cerr := l.cleanup(cctx, id); cerr != nil {
				l.logger.Warn("failed to clean up after an aborted acquire; the session will expire", "session", id, "error", cerr)
			}
		} else {
			l.logger.Warn("resumed session not re-acquired; leaving it to expire", "session", id)
		}
	}
	l.reset(fmt.Errorf("%w: %w", ErrLost, err))
	return nil, notAcquired(err)
}

func (l *Lock) acquire(ctx context.Context) (<-chan struct{}, error) {
	id, resumed, confirmed, err := l.obtainSession(ctx)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	sessionCtx, lostClose := context.WithCancel(ctx)
	defer lostClose() // only matters if we return before handing it to l
	l.mu.Lock()
	l.session, l.created = id, !resumed
	l.lost, l.lostErr = make(chan struct{}), nil
	l.lostClose, l.cancel = lostClose, cancel
	l.mu.Unlock()

	r := &renewer{api: l.sessions, id: id, ttl: l.opts.TTL, clock: l.opts.Clock, logger: l.logger.Named("renew")}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		if err := r.run(runCtx, confirmed); err != nil {
			l.markLost(err)
		}
	}()

	if err := l.contend(sessionCtx, id, resumed); err != nil {
		if lerr := l.Err(); lerr != nil && ctx.Err() == nil {
			return nil, lerr
		}
		return nil, err
	}

	l.mu.Lock()
	l.held = true
	lost := l.lost
	l.mu.Unlock()
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		if err := l.monitor(runCtx, id); err != nil {
			l.markLost(err)
		}
	}()
	l.logger.Info("lock acquired", "session", id, "resumed", resumed)
	return lost, nil
}

// markLost closes the lost channel once, recording why.
func (l *Lock) markLost(reason error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost == nil || l.lostErr != nil {
		return
	}
	l.lostErr = reason
	close(l.lost)
	if l.lostClose != nil {
		l.lostClose()
	}
	if l.held && !errors.Is(reason, ErrReleased) {
		l.logger.Error("lock lost", "session", l.session, "reason", reason)
	}
}

// stopWorkers stops the renewer and the monitor and waits for them.
func (l *Lock) stopWorkers() {
	l.mu.Lock()
	cancel := l.cancel
	l.cancel = nil
	l.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	l.wg.Wait()
}

// reset forgets the session after a Release or a failed Acquire, closing lost with reason.
func (l *Lock) reset(reason error) {
	l.markLost(reason)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lostClose != nil {
		l.lostClose()
	}
	l.session, l.created, l.held = "", false, false
	l.lost, l.lostClose = nil, nil
}

// Release gives the slot back: it stops renewing, closes the lost channel (ErrReleased, unless it was
// already lost), removes our session from the semaphore record (CAS), deletes our contender entry, destroys
// the session and deregisters the anchor node (unless another session uses it). Idempotent: releasing
// nothing returns nil, and a Release that failed half-way (ctx done, Consul unreachable) can be called
// again; until then the session simply expires. Call it after a loss too: it stops the renewal, which
// otherwise runs until Release, and removes what is left.
func (l *Lock) Release(ctx context.Context) error {
	l.op.Lock()
	defer l.op.Unlock()
	id := l.SessionID()
	if id == "" {
		return nil
	}
	l.stopWorkers()
	l.markLost(ErrReleased) // from here on nothing renews the session: it is not held any more
	if err := l.cleanup(ctx, id); err != nil {
		return fmt.Errorf("failed to release the lock at %s: %w", l.opts.Prefix, err)
	}
	l.logger.Info("lock released", "session", id)
	l.reset(ErrReleased)
	return nil
}

// cleanup removes every trace of session id. Each step is idempotent.
func (l *Lock) cleanup(ctx context.Context, id string) error {
	if err := l.removeHolder(ctx, id); err != nil {
		return err
	}
	err := retry(ctx, l.opts.Clock, l.onRetry("delete contender entry"), func(ctx context.Context) error {
		_, derr := l.kv.Delete(l.opts.Prefix+id, (&api.WriteOptions{}).WithContext(ctx))
		return derr
	})
	if err != nil {
		return fmt.Errorf("failed to delete contender entry %s%s: %w", l.opts.Prefix, id, err)
	}
	if err := l.destroySession(ctx, id); err != nil {
		return err
	}
	return l.deregisterAnchor(ctx)
}

// removeHolder drops id from the semaphore record with CAS, re-reading on a lost race.
func (l *Lock) removeHolder(ctx context.Context, id string) error {
	key := l.opts.Prefix + lockKeyName
	err := retry(ctx, l.opts.Clock, l.onRetry("remove holder"), func(ctx context.Context) error {
		for ctx.Err() == nil {
			pair, _, err := l.kv.Get(key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
			if err != nil {
				return err
			}
			if pair == nil {
				return nil
			}
			st, err := readState(l.opts.Prefix, api.KVPairs{pair}, l.opts.Limit)
			if err != nil {
				if errors.Is(err, ErrNotSemaphore) {
					l.logger.Warn("semaphore record replaced by something else; not touching it", "error", err)
					return nil
				}
				return err
			}
			if !st.rec.Holders[id] {
				return nil
			}
			next, err := encodeRecord(l.opts.Prefix, withoutHolder(st.rec, id), pair.ModifyIndex)
			if err != nil {
				return err
			}
			ok, _, err := l.kv.CAS(next, (&api.WriteOptions{}).WithContext(ctx))
			if err != nil || ok {
				return err
			}
		}
		return ctx.Err()
	})
	if err != nil {
		return fmt.Errorf("failed to remove session %s from %s: %w", id, key, err)
	}
	return nil
}

// StillHeld reports, from a consistent read, whether the semaphore names our session as a live holder
// (listed in the record, contender entry held by the session). Transient errors are retried until ctx is
// done; (false, err) means the answer is unknown, which callers must treat as not held.
func (l *Lock) StillHeld(ctx context.Context) (bool, error) {
	id := l.SessionID()
	if id == "" {
		return false, nil
	}
	var pairs api.KVPairs
	err := retry(ctx, l.opts.Clock, l.onRetry("read semaphore"), func(ctx context.Context) error {
		var lerr error
		pairs, _, lerr = l.kv.List(l.opts.Prefix, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
		return lerr
	})
	if err != nil {
		return false, fmt.Errorf("failed to read the semaphore at %s: %w", l.opts.Prefix, err)
	}
	st, err := readState(l.opts.Prefix, pairs, l.opts.Limit)
	if err != nil {
		return false, err
	}
	return st.holds(id), nil
}

func (l *Lock) onRetry(op string) func(error) {
	return func(err error) { l.logger.Warn("transient consul error; retrying", "op", op, "error", err) }
}
