package lock

import (
	"errors"
	"fmt"
)

var (
	// ErrNotAcquired is wrapped by every error Acquire returns: nothing may proceed. The cause (context
	// done, limit conflict, permission denied, ...) is wrapped too.
	ErrNotAcquired = errors.New("lock: not acquired")
	// ErrHeld is returned by Acquire when this Lock already holds (or lost and has not released) its slot.
	ErrHeld = errors.New("lock: already held; release it first")
	// ErrConfig prefixes invalid Options.
	ErrConfig = errors.New("lock: invalid options")
	// ErrNotSemaphore means the prefix's .lock key exists but is not a semaphore record (another tool, or a
	// plain Consul lock, uses the same prefix).
	ErrNotSemaphore = errors.New("lock: existing key is not a semaphore")
	// ErrLimitConflict is matched by *LimitConflictError.
	ErrLimitConflict = errors.New("lock: semaphore limit conflict")

	// ErrLost is wrapped by every reason the lost channel closes (see Lock.Err).
	ErrLost = errors.New("lock: lost")
	// ErrSessionGone: Consul no longer has our session (renewal answered 404, or it was destroyed).
	ErrSessionGone = fmt.Errorf("%w: session no longer exists", ErrLost)
	// ErrRenewDeadline: the session could not be renewed within its TTL; Consul may invalidate it any moment.
	ErrRenewDeadline = fmt.Errorf("%w: session not renewed within its TTL", ErrLost)
	// ErrNotHolder: a consistent read of the semaphore no longer names our session as a live holder.
	ErrNotHolder = fmt.Errorf("%w: the semaphore no longer names our session", ErrLost)
	// ErrUnobservable: the semaphore could not be read for longer than MonitorGrace.
	ErrUnobservable = fmt.Errorf("%w: the semaphore could not be read", ErrLost)
	// ErrReleased: Release was called. Wraps ErrLost so that code waiting on the channel stops either way.
	ErrReleased = fmt.Errorf("%w: released", ErrLost)
)

// LimitConflictError is a configuration error: the semaphore in Consul was created with another limit than
// this upgrader's. Change the configuration, or delete "<Prefix>.lock" while nobody holds it.
type LimitConflictError struct {
	Prefix string
	Theirs int // the limit recorded in Consul
	Ours   int // this upgrader's configured limit
}

var _ error = (*LimitConflictError)(nil)

func (e *LimitConflictError) Error() string {
	return fmt.Sprintf("semaphore limit conflict: the lock at %s says %d, this upgrader is configured with %d "+
		"(all upgraders must agree; to change the limit, delete %s.lock while nobody holds it)",
		e.Prefix, e.Theirs, e.Ours, e.Prefix)
}

// Is makes errors.Is(err, ErrLimitConflict) true.
func (e *LimitConflictError) Is(target error) bool { return target == ErrLimitConflict }

// notAcquired makes err match ErrNotAcquired (keeping the cause matchable).
func notAcquired(err error) error {
	if err == nil || errors.Is(err, ErrNotAcquired) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrNotAcquired, err)
}
