package lock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// sessionAPI is the part of the Consul session API a Lock uses (*api.Session).
type sessionAPI interface {
	CreateNoChecks(se *api.SessionEntry, q *api.WriteOptions) (string, *api.WriteMeta, error)
	Destroy(id string, q *api.WriteOptions) (*api.WriteMeta, error)
	Info(id string, q *api.QueryOptions) (*api.SessionEntry, *api.QueryMeta, error)
	Node(node string, q *api.QueryOptions) ([]*api.SessionEntry, *api.QueryMeta, error)
	renewAPI
}

// renewAPI is all the renewer needs.
type renewAPI interface {
	Renew(id string, q *api.WriteOptions) (*api.SessionEntry, *api.WriteMeta, error)
}

// catalogAPI registers the anchor node (*api.Catalog).
type catalogAPI interface {
	Register(reg *api.CatalogRegistration, q *api.WriteOptions) (*api.WriteMeta, error)
	Deregister(dereg *api.CatalogDeregistration, q *api.WriteOptions) (*api.WriteMeta, error)
}

// obtainSession resumes Options.SessionID when it still exists on our anchor node, or registers the anchor
// and creates a new session. It returns the session, whether it was resumed, and the time of the last
// moment Consul is known to have reset the session's TTL (the renewer's starting point).
func (l *Lock) obtainSession(ctx context.Context) (id string, resumed bool, confirmed time.Time, err error) {
	if l.opts.SessionID != "" {
		id, confirmed, err = l.resumeSession(ctx, l.opts.SessionID)
		if err != nil {
			return "", false, time.Time{}, err
		}
		if id != "" {
			return id, true, confirmed, nil
		}
	}
	if err := l.registerAnchor(ctx); err != nil {
		return "", false, time.Time{}, err
	}
	entry := &api.SessionEntry{
		Name:      l.opts.SessionName,
		Node:      l.anchor,
		LockDelay: l.opts.LockDelay,
		Behavior:  api.SessionBehaviorRelease,
		TTL:       ttlString(l.opts.TTL),
	}
	err = retry(ctx, l.opts.Clock, l.onRetry("create session"), func(ctx context.Context) error {
		confirmed = l.opts.Clock.Now()
		// CreateNoChecks sends "NodeChecks": [] explicitly. api.Session.Create drops an empty NodeChecks
		// slice, and Consul then ties the session to serfHealth, which an agent-less node does not have.
		var cerr error
		id, _, cerr = l.sessions.CreateNoChecks(entry, (&api.WriteOptions{}).WithContext(ctx))
		return cerr
	})
	if err != nil {
		return "", false, time.Time{}, fmt.Errorf("failed to create a session on %s: %w", l.anchor, err)
	}
	l.logger.Info("session created", "session", id, "node", l.anchor, "ttl", l.opts.TTL, "lock_delay", l.opts.LockDelay)
	return id, false, confirmed, nil
}

// resumeSession returns id if the session still exists on our anchor node (renewing it once), or "".
func (l *Lock) resumeSession(ctx context.Context, id string) (string, time.Time, error) {
	var info *api.SessionEntry
	err := retry(ctx, l.opts.Clock, l.onRetry("read journaled session"), func(ctx context.Context) error {
		var ierr error
		info, _, ierr = l.sessions.Info(id, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
		return ierr
	})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("failed to read journaled session %s: %w", id, err)
	}
	if info == nil {
		l.logger.Info("journaled session no longer exists; creating a new one", "session", id)
		return "", time.Time{}, nil
	}
	if info.Node != l.anchor {
		l.logger.Warn("journaled session belongs to another node; not resuming it", "session", id,
			"node", info.Node, "want", l.anchor)
		return "", time.Time{}, nil
	}
	var confirmed time.Time
	var renewed *api.SessionEntry
	err = retry(ctx, l.opts.Clock, l.onRetry("renew journaled session"), func(ctx context.Context) error {
		confirmed = l.opts.Clock.Now()
		var rerr error
		renewed, _, rerr = l.sessions.Renew(id, (&api.WriteOptions{}).WithContext(ctx))
		return rerr
	})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("failed to renew journaled session %s: %w", id, err)
	}
	if renewed == nil {
		l.logger.Info("journaled session expired while resuming; creating a new one", "session", id)
		return "", time.Time{}, nil
	}
	l.logger.Info("resumed journaled session", "session", id, "node", l.anchor)
	return id, confirmed, nil
}

// registerAnchor registers the agent-less catalog node that carries our session. It has no checks and no
// agent: no serf failure, graceful leave or autopilot cleanup of a real node can take the session with it.
func (l *Lock) registerAnchor(ctx context.Context) error {
	reg := &api.CatalogRegistration{
		Node:    l.anchor,
		Address: l.opts.Address,
		NodeMeta: map[string]string{
			"upgrader-anchor": "true",
			"upgrader-holder": l.opts.Holder,
		},
	}
	err := retry(ctx, l.opts.Clock, l.onRetry("register anchor node"), func(ctx context.Context) error {
		_, rerr := l.catalog.Register(reg, (&api.WriteOptions{}).WithContext(ctx))
		return rerr
	})
	if err != nil {
		return fmt.Errorf("failed to register anchor node %s: %w", l.anchor, err)
	}
	return nil
}

// deregisterAnchor removes the anchor node unless another session (another Lock of this holder) still
// uses it.
func (l *Lock) deregisterAnchor(ctx context.Context) error {
	var others []*api.SessionEntry
	err := retry(ctx, l.opts.Clock, l.onRetry("list anchor sessions"), func(ctx context.Context) error {
		var nerr error
		others, _, nerr = l.sessions.Node(l.anchor, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
		return nerr
	})
	if err != nil {
		return fmt.Errorf("failed to list sessions of anchor node %s: %w", l.anchor, err)
	}
	if len(others) > 0 {
		l.logger.Debug("anchor node still carries sessions; keeping it", "node", l.anchor, "sessions", len(others))
		return nil
	}
	err = retry(ctx, l.opts.Clock, l.onRetry("deregister anchor node"), func(ctx context.Context) error {
		_, derr := l.catalog.Deregister(&api.CatalogDeregistration{Node: l.anchor}, (&api.WriteOptions{}).WithContext(ctx))
		return derr
	})
	if err != nil {
		return fmt.Errorf("failed to deregister anchor node %s: %w", l.anchor, err)
	}
	return nil
}

// destroySession destroys id (a missing session is fine).
func (l *Lock) destroySession(ctx context.Context, id string) error {
	err := retry(ctx, l.opts.Clock, l.onRetry("destroy session"), func(ctx context.Context) error {
		_, derr := l.sessions.Destroy(id, (&api.WriteOptions{}).WithContext(ctx))
		return derr
	})
	if err != nil {
		return fmt.Errorf("failed to destroy session %s: %w", id, err)
	}
	return nil
}

// renewer keeps a session alive. It renews every TTL/3; a transiently failing renewal is retried with
// backoff until the session would expire by our count (last successful renewal + TTL, stricter than
// Consul's 2×TTL); a 404 or a permanent error is a loss.
type renewer struct {
	api    renewAPI
	id     string
	ttl    time.Duration
	clock  Clock
	logger hclog.Logger
}

// run renews until ctx is done (returns nil) or the session is lost (returns the reason, wrapping ErrLost).
// confirmed is the last moment Consul is known to have reset the TTL.
func (r *renewer) run(ctx context.Context, confirmed time.Time) error {
	interval := renewInterval(r.ttl)
	wait := interval - r.clock.Now().Sub(confirmed)
	bo := newBackoff()
	var lastErr error
	for {
		if err := sleep(ctx, r.clock, wait); err != nil {
			return nil
		}
		deadline := confirmed.Add(r.ttl)
		now := r.clock.Now()
		if !now.Before(deadline) {
			r.logger.Error("session not renewed within its TTL", "session", r.id, "ttl", r.ttl, "last_error", lastErr)
			return fmt.Errorf("%w (session %s, last error: %v)", ErrRenewDeadline, r.id, lastErr)
		}
		rctx, cancel := context.WithTimeout(ctx, deadline.Sub(now))
		entry, _, err := r.api.Renew(r.id, (&api.WriteOptions{}).WithContext(rctx))
		timedOut := errors.Is(rctx.Err(), context.DeadlineExceeded)
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil && entry == nil:
			r.logger.Error("session no longer exists", "session", r.id)
			return fmt.Errorf("%w (session %s: renewal answered 404)", ErrSessionGone, r.id)
		case err == nil:
			if lastErr != nil {
				r.logger.Info("session renewed again", "session", r.id, "after", now.Sub(confirmed))
			}
			confirmed, lastErr, wait = now, nil, interval
			bo.reset()
		case isTransient(err) || timedOut:
			lastErr = err
			wait = min(bo.next(), deadline.Sub(r.clock.Now()))
			r.logger.Warn("session renewal failed; retrying", "session", r.id, "error", err,
				"expires_in", deadline.Sub(now))
		default:
			r.logger.Error("session renewal failed for good", "session", r.id, "error", err)
			return fmt.Errorf("%w: session %s cannot be renewed: %w", ErrLost, r.id, err)
		}
	}
}
