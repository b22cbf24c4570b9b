package lock

import (
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

const (
	// DefaultTTL is the session TTL. Consul refuses TTLs under 10s (session_ttl_min) and invalidates a session
	// only after 2×TTL without a renewal, so 15s bounds how long a crashed holder blocks the rollout to about
	// 30s plus LockDelay (F10), while our renewal every TTL/3 (5s) leaves two more attempts (an election, a
	// restarting agent) before our own, stricter deadline (last successful renewal + TTL) declares the lock
	// lost. Longer TTLs only make a crash cost more.
	DefaultTTL = 15 * time.Second

	// DefaultLockDelay is set explicitly on the session and also applied by this package to dead holders of
	// the semaphore before pruning them (Consul's own lock-delay only guards keys the dead session held, and
	// semaphore contender keys are never re-acquired by another session). It is the grace a holder that lost
	// its session without noticing (destroyed by an operator, invalidated during a partition) gets to see the
	// loss through its watch and stop before anybody else starts. Consul's default is 15s, which would add
	// 15s to every crash recovery; 5s is well above the time a watch needs to see a change and stays small
	// next to the 2×TTL a crash already costs.
	DefaultLockDelay = 5 * time.Second

	// DefaultWaitTime is how long one blocking query waits while contending or watching. Cancellation does
	// not wait for it (queries carry the context); it only bounds how long we go without re-reading.
	DefaultWaitTime = 10 * time.Second

	// DefaultMonitorGrace is how long the watch rides out consecutive transient errors (500 No cluster leader
	// during an election, every reachable agent restarting) before declaring the lock lost: long enough for
	// an election and for the local agent's restart when no fallback agent is reachable (up to 60s, F8). The
	// session's own renewal deadline still applies: a session that cannot be renewed within TTL is lost first.
	DefaultMonitorGrace = 60 * time.Second

	// DefaultCleanupTimeout bounds the clean-up after an aborted Acquire, whose context is already done.
	DefaultCleanupTimeout = 10 * time.Second

	// DefaultAnchorAddress is the anchor node's address when Options.Address is empty.
	DefaultAnchorAddress = "127.0.0.1"

	// minTTL and maxTTL are Consul's default bounds (session_ttl_min, 24h). Checked here because Consul
	// answers an invalid TTL with a 500, which would look transient.
	minTTL = 10 * time.Second
	maxTTL = 24 * time.Hour
	// maxLockDelay is Consul's upper bound for lock-delay.
	maxLockDelay = 60 * time.Second
)

// Options configures a Lock. Zero values get the Default… values.
type Options struct {
	// Prefix is the semaphore's KV prefix, e.g. "upgrader/consul/lock/servers/". A trailing "/" is added.
	Prefix string
	// Limit is how many holders the semaphore admits (1 for servers). Every contender must agree.
	Limit int
	// Holder names this upgrader (its node name). The session's anchor node is "upgrader-anchor-<Holder>".
	Holder string
	// Address is the anchor node's address (the holder's address); DefaultAnchorAddress if empty.
	Address string
	// TTL of the session, renewed every TTL/3. See DefaultTTL.
	TTL time.Duration
	// LockDelay, see DefaultLockDelay. Between 1ms and 60s.
	LockDelay time.Duration
	// Value is stored in this holder's contender entry (who holds the lock and why).
	Value []byte
	// Logger is Named("lock").
	Logger hclog.Logger
	// SessionID resumes a journaled session: if it still exists on our anchor node it is reused, and if it
	// still holds a slot Acquire re-enters that slot without ever giving it up.
	SessionID string
	// SessionName is the session's name; defaults to "upgrader <Prefix> <Holder>".
	SessionName string

	// WaitTime, MonitorGrace, CleanupTimeout: see the Default… constants.
	WaitTime       time.Duration
	MonitorGrace   time.Duration
	CleanupTimeout time.Duration
	// Clock is injectable for tests; the wall clock by default.
	Clock Clock
}

// finalize validates o and fills defaults. Pure.
func (o Options) finalize() (Options, error) {
	if strings.TrimSpace(o.Prefix) == "" {
		return o, fmt.Errorf("%w: prefix is required", ErrConfig)
	}
	o.Prefix = strings.TrimLeft(o.Prefix, "/")
	if !strings.HasSuffix(o.Prefix, "/") {
		o.Prefix += "/"
	}
	if o.Limit < 1 {
		return o, fmt.Errorf("%w: limit must be at least 1, got %d", ErrConfig, o.Limit)
	}
	if o.Holder == "" || strings.ContainsAny(o.Holder, "/ \t\n") {
		return o, fmt.Errorf("%w: holder must be a node name, got %q", ErrConfig, o.Holder)
	}
	if o.Address == "" {
		o.Address = DefaultAnchorAddress
	}
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.TTL < minTTL || o.TTL > maxTTL {
		return o, fmt.Errorf("%w: ttl %s is outside Consul's %s..%s", ErrConfig, o.TTL, minTTL, maxTTL)
	}
	if o.LockDelay == 0 {
		o.LockDelay = DefaultLockDelay
	}
	if o.LockDelay < time.Millisecond || o.LockDelay > maxLockDelay {
		return o, fmt.Errorf("%w: lock delay %s is outside 1ms..%s", ErrConfig, o.LockDelay, maxLockDelay)
	}
	if o.WaitTime <= 0 {
		o.WaitTime = DefaultWaitTime
	}
	if o.MonitorGrace <= 0 {
		o.MonitorGrace = DefaultMonitorGrace
	}
	if o.CleanupTimeout <= 0 {
		o.CleanupTimeout = DefaultCleanupTimeout
	}
	if o.SessionName == "" {
		o.SessionName = "upgrader " + o.Prefix + " " + o.Holder
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.Clock == nil {
		o.Clock = wallClock{}
	}
	return o, nil
}

// anchorNode is the catalog node the session is tied to.
func anchorNode(holder string) string { return "upgrader-anchor-" + holder }

// renewInterval is how often the session is renewed.
func renewInterval(ttl time.Duration) time.Duration { return ttl / 3 }

// ttlString formats a TTL the way Consul parses it ("15s").
func ttlString(ttl time.Duration) string {
	return fmt.Sprintf("%ds", int64((ttl+time.Second-1)/time.Second))
}
