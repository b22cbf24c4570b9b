package rollout

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// KV is the part of Consul's KV API the Store uses; *api.KV satisfies it, and so can a wrapper that fails
// over between agents.
type KV interface {
	Get(key string, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error)
	List(prefix string, q *api.QueryOptions) (api.KVPairs, *api.QueryMeta, error)
	Put(p *api.KVPair, q *api.WriteOptions) (*api.WriteMeta, error)
	CAS(p *api.KVPair, q *api.WriteOptions) (bool, *api.WriteMeta, error)
}

// Clock tells the Store the time it stamps on records.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Defaults for blocking queries and check-and-set retries.
const (
	// DefaultWaitTime is how long one blocking query waits server-side before returning unchanged; below
	// Consul's 10m cap and short enough that a dead connection is noticed within minutes.
	DefaultWaitTime = 5 * time.Minute
	// DefaultCASAttempts bounds a read-modify-write: a handful of upgraders write the rollout record, so
	// more conflicts than this mean something is wrong.
	DefaultCASAttempts = 16
	// A blocking query that returns unchanged sooner than this is treated as misbehaving and backed off,
	// so a buggy index can never make a busy loop.
	minBlockingReturn = time.Second
)

// Errors callers may test with errors.Is.
var (
	// ErrConflict means a check-and-set lost against a concurrent writer (or kept losing, for retried
	// updates).
	ErrConflict = errors.New("rollout: key changed concurrently")
	// ErrPermissionDenied means Consul answered 403: the token lacks a rule. Never retried.
	ErrPermissionDenied = errors.New("rollout: permission denied by Consul ACLs")
)

// TargetError says the target key holds no usable target: it is missing or empty (errors.Is ErrNoTarget)
// or its content does not parse. Index is where to continue watching, so a bad value costs one log line
// and a wait for the next write, never a busy loop.
type TargetError struct {
	Index uint64
	Raw   []byte
	Err   error
}

func (e *TargetError) Error() string { return e.Err.Error() }
func (e *TargetError) Unwrap() error { return e.Err }

var _ error = (*TargetError)(nil)

// Store reads and writes the rollout state of one product under one prefix.
type Store struct {
	kv          KV
	keys        Keys
	clock       Clock
	logger      hclog.Logger
	waitTime    time.Duration
	casAttempts int
	retryMin    time.Duration
	retryMax    time.Duration
}

// Option configures a Store.
type Option func(*Store)

// WithPrefix sets the KV prefix (default DefaultPrefix).
func WithPrefix(prefix string) Option { return func(s *Store) { s.keys.base = prefix } }

// WithClock sets the clock used for timestamps (default: the system clock).
func WithClock(c Clock) Option { return func(s *Store) { s.clock = c } }

// WithLogger sets the logger; the Store names it "rollout".
func WithLogger(l hclog.Logger) Option { return func(s *Store) { s.logger = l } }

// WithWaitTime sets the server-side wait of each blocking query (default DefaultWaitTime).
func WithWaitTime(d time.Duration) Option { return func(s *Store) { s.waitTime = d } }

// WithRetry sets the backoff bounds between retries of failed or conflicting requests
// (default 100ms to 10s).
func WithRetry(min, max time.Duration) Option {
	return func(s *Store) { s.retryMin, s.retryMax = min, max }
}

// NewStore returns a Store for product (e.g. "consul") on kv.
func NewStore(kv KV, product string, opts ...Option) (*Store, error) {
	if kv == nil {
		return nil, errors.New("rollout: nil KV")
	}
	s := &Store{
		kv:          kv,
		keys:        Keys{base: DefaultPrefix},
		clock:       systemClock{},
		logger:      hclog.NewNullLogger(),
		waitTime:    DefaultWaitTime,
		casAttempts: DefaultCASAttempts,
		retryMin:    100 * time.Millisecond,
		retryMax:    10 * time.Second,
	}
	for _, o := range opts {
		o(s)
	}
	keys, err := NewKeys(s.keys.base, product)
	if err != nil {
		return nil, err
	}
	s.keys = keys
	s.logger = s.logger.Named("rollout")
	if s.retryMin <= 0 || s.retryMax < s.retryMin {
		return nil, fmt.Errorf("rollout: invalid retry bounds %s..%s", s.retryMin, s.retryMax)
	}
	return s, nil
}

// Keys returns the key names the Store uses.
func (s *Store) Keys() Keys { return s.keys }

// ReadTarget reads the target once, without retrying: a failed request is returned (marked
// ErrPermissionDenied for a 403). The index is the key's ModifyIndex (the input of RolloutID) when the
// key exists; a missing, empty or invalid target is a *TargetError.
func (s *Store) ReadTarget(ctx context.Context) (Target, []byte, uint64, error) {
	key := s.keys.Target()
	pair, meta, err := s.kv.Get(key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return Target{}, nil, 0, fmt.Errorf("failed to read %s: %w", key, markPermanent(err))
	}
	return decodeTargetPair(pair, max(meta.LastIndex, 1))
}

// WatchTarget blocks until the target key changes after waitIndex (0: read now) and returns the parsed
// target, the raw content and the index to pass to the next call. For a present key that index is the
// key's ModifyIndex. A missing, empty or unparseable target returns a *TargetError carrying the index;
// the caller logs it and calls again with that index to wait for the next write.
//
// It follows Consul's blocking-query rules: an unchanged return (wait timeout) is not a change and
// blocks again; an index that goes backwards (a restored snapshot, a new cluster) resets the watch and
// returns the current content; an index of 0 is treated as 1. Transient errors (agent restarting, no
// leader) are logged and retried with backoff until ctx ends; a 403 returns ErrPermissionDenied.
//
// While the key is missing Consul reports the index of the whole KV store: the query is not woken by
// other keys' writes, but when its wait times out it returns a higher index if any key was written
// meanwhile (seen on 1.16.1), so WatchTarget reports the missing target again. TargetWatch suppresses
// those repeats.
func (s *Store) WatchTarget(ctx context.Context, waitIndex uint64) (Target, []byte, uint64, error) {
	pair, idx, err := s.watchKey(ctx, s.keys.Target(), waitIndex)
	if err != nil {
		return Target{}, nil, waitIndex, err
	}
	return decodeTargetPair(pair, idx)
}

func decodeTargetPair(pair *api.KVPair, idx uint64) (Target, []byte, uint64, error) {
	if pair == nil {
		return Target{}, nil, idx, &TargetError{Index: idx, Err: ErrNoTarget}
	}
	t, err := ParseTarget(pair.Value)
	if err != nil {
		return Target{}, pair.Value, idx, &TargetError{Index: idx, Raw: pair.Value, Err: err}
	}
	return t, pair.Value, idx, nil
}

// watchKey is one blocking read of key that returns only on a change, ctx end or a permanent error.
func (s *Store) watchKey(ctx context.Context, key string, waitIndex uint64) (*api.KVPair, uint64, error) {
	bo := newBackoff(s.retryMin, max(s.retryMax, 30*time.Second))
	for {
		if err := ctx.Err(); err != nil {
			return nil, waitIndex, err
		}
		start := s.clock.Now()
		q := (&api.QueryOptions{WaitIndex: waitIndex, WaitTime: s.waitTime}).WithContext(ctx)
		pair, meta, err := s.kv.Get(key, q)
		if err != nil {
			if ctx.Err() != nil {
				return nil, waitIndex, ctx.Err()
			}
			if err := permanent(err); err != nil {
				return nil, waitIndex, fmt.Errorf("failed to read %s: %w", key, err)
			}
			s.logger.Warn("failed to read key, retrying", "key", key, "error", err)
			if err := bo.wait(ctx); err != nil {
				return nil, waitIndex, err
			}
			continue
		}
		idx := meta.LastIndex
		switch {
		case idx < waitIndex:
			s.logger.Info("Consul index went backwards, resetting the watch", "key", key, "from", waitIndex, "to", idx)
		case waitIndex > 0 && idx == waitIndex:
			// Unchanged: the wait timed out. Block again, but never spin on a server that returns early.
			if took := s.clock.Now().Sub(start); took < minBlockingReturn {
				s.logger.Debug("blocking query returned early without a change, backing off", "key", key, "index", idx, "took", took)
				if err := bo.wait(ctx); err != nil {
					return nil, waitIndex, err
				}
			} else {
				bo.reset()
			}
			continue
		}
		if idx == 0 {
			idx = 1
		}
		return pair, idx, nil
	}
}

// permanent returns err marked with ErrPermissionDenied when Consul refused it for ACL reasons, nil when
// it may be retried (connection refused, 500 No cluster leader, timeouts).
func permanent(err error) error {
	var se api.StatusError
	if errors.As(err, &se) && se.Code == http.StatusForbidden {
		return fmt.Errorf("%w: %w", ErrPermissionDenied, err)
	}
	// Older code paths format the status into the message only.
	if strings.Contains(err.Error(), "Unexpected response code: 403") {
		return fmt.Errorf("%w: %w", ErrPermissionDenied, err)
	}
	return nil
}

// TargetWatch follows the target across calls and reports a missing target once, not again after every
// wait timeout that follows an unrelated KV write (see WatchTarget). Not safe for concurrent use.
type TargetWatch struct {
	s        *Store
	index    uint64
	noTarget bool
}

// NewTargetWatch starts a watch that first reports the current target.
func (s *Store) NewTargetWatch() *TargetWatch { return &TargetWatch{s: s} }

// Index is the index the next call waits after.
func (w *TargetWatch) Index() uint64 { return w.index }

// Next returns the next change of the target, with WatchTarget's results.
func (w *TargetWatch) Next(ctx context.Context) (Target, []byte, uint64, error) {
	for {
		t, raw, idx, err := w.s.WatchTarget(ctx, w.index)
		var te *TargetError
		if err != nil && !errors.As(err, &te) {
			return t, raw, idx, err
		}
		noTarget := errors.Is(err, ErrNoTarget)
		repeat := noTarget && w.noTarget && idx >= w.index
		w.index, w.noTarget = idx, noTarget
		if repeat {
			continue
		}
		return t, raw, idx, err
	}
}

// SetTarget validates t, stamps SetAt with the clock when unset, and writes it as JSON. It returns the
// target as written.
func (s *Store) SetTarget(ctx context.Context, t Target) (Target, error) {
	t, err := t.Validate()
	if err != nil {
		return Target{}, err
	}
	if t.SetAt.IsZero() {
		t.SetAt = s.clock.Now().UTC().Truncate(time.Second)
	}
	b, err := t.JSON()
	if err != nil {
		return Target{}, err
	}
	if _, err := s.kv.Put(&api.KVPair{Key: s.keys.Target(), Value: b}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return Target{}, fmt.Errorf("failed to write target %s: %w", s.keys.Target(), markPermanent(err))
	}
	return t, nil
}

// markPermanent adds ErrPermissionDenied to an ACL refusal and leaves other errors as they are.
func markPermanent(err error) error {
	if p := permanent(err); p != nil {
		return p
	}
	return err
}

// update is a check-and-set read-modify-write of key. fn sees the current pair (nil when missing) and
// returns the new value and whether to write it; it may run several times and must only compute (or do
// idempotent writes). Conflicts and transient errors retry with backoff up to casAttempts.
func (s *Store) update(ctx context.Context, key string, fn func(cur *api.KVPair) ([]byte, bool, error)) error {
	bo := newBackoff(s.retryMin, s.retryMax)
	var last error
	for attempt := 0; attempt < s.casAttempts; attempt++ {
		if attempt > 0 {
			if err := bo.wait(ctx); err != nil {
				return fmt.Errorf("failed to update %s: %w (last: %v)", key, err, last)
			}
		}
		pair, _, err := s.kv.Get(key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
		if err != nil {
			if p := permanent(err); p != nil || ctx.Err() != nil {
				return fmt.Errorf("failed to read %s: %w", key, markPermanent(err))
			}
			last = err
			s.logger.Debug("failed to read for update, retrying", "key", key, "error", err)
			continue
		}
		val, write, err := fn(pair)
		if err != nil || !write {
			return err
		}
		next := &api.KVPair{Key: key, Value: val}
		if pair != nil {
			next.ModifyIndex = pair.ModifyIndex
		}
		ok, _, err := s.kv.CAS(next, (&api.WriteOptions{}).WithContext(ctx))
		if err != nil {
			if p := permanent(err); p != nil || ctx.Err() != nil {
				return fmt.Errorf("failed to write %s: %w", key, markPermanent(err))
			}
			last = err
			s.logger.Debug("failed to write for update, retrying", "key", key, "error", err)
			continue
		}
		if ok {
			return nil
		}
		last = ErrConflict
		s.logger.Debug("check-and-set conflict, retrying", "key", key, "attempt", attempt+1)
	}
	return fmt.Errorf("failed to update %s after %d attempts: %w", key, s.casAttempts, last)
}
