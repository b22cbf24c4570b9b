// Package lock owns the Consul semaphore that serializes upgrades, and the session behind it.
//
// Failure semantics. As with Consul's api.Lock and api.Semaphore, the channel Acquire returns may be closed
// at any time: the session was invalidated, the semaphore no longer names us, Consul could not be read for
// too long, or Release was called. It is NOT safe to assume the lock is held just because that channel is
// still open: it closes only once this process notices, and is seen only when checked. Callers check it
// (and call StillHeld, a consistent read) before every step that needs the lock, above all after restarting
// an agent, and stop at the next safe point once it is closed. Err says why it closed. Acquire never
// returns (nil, nil): every failure, an aborted wait included, wraps ErrNotAcquired.
//
// The timing that makes this safe: cut off from every agent, we declare the lock lost at the last
// successful renewal + TTL; Consul invalidates the session no earlier than 2×TTL after it, and another
// contender prunes it LockDelay after seeing that. So a holder has TTL + LockDelay, from the moment its lost
// channel closes, to stop before anybody else can start.
//
// What we do differently from api.Semaphore, and why (the lock lives in the cluster being restarted):
//   - The session is tied to an agent-less node registered in the catalog ("upgrader-anchor-<holder>"), with
//     "NodeChecks": [] sent explicitly, TTL only. A session on the holder's real node dies with that node: a
//     client agent leaves on SIGTERM and takes its sessions along, and autopilot removes a server that has
//     been down for a few seconds, sessions and all (F7).
//   - The Lock renews the session itself, every TTL/3, through whatever client it is given; give it a
//     consulconn client so renewals and the watch fail over to other agents while the local one restarts.
//     A renewal that fails transiently (connection refused, 500 No cluster leader) is retried with backoff
//     until last-success+TTL; a 404 is a real loss. The watch rides out transient errors for MonitorGrace
//     (F8). Consul only invalidates after 2×TTL, so we declare a loss before anybody else can take the slot.
//   - Session behaviour is "release", not "delete": a dead holder's contender entry (its Value: who held the
//     lock, doing what) survives its session, so the next holder can log it before pruning it; stale entries
//     are deleted by CAS once no record lists them.
//   - An explicit lock-delay (DefaultLockDelay) is set on the session and enforced here for the semaphore:
//     a dead holder keeps its slot for LockDelay after it is first seen dead (F10), so a holder that lost its
//     session without noticing has time to see it and stop.
//   - Everything takes a context (Consul's stopCh is wrapped at this boundary); a contender whose context is
//     done deletes its contender entry and its session instead of leaving them behind (F9).
//   - A limit conflict is a *LimitConflictError naming both limits (F11).
//   - Options.SessionID resumes a journaled session: a restarted upgrader re-enters the slot it already holds
//     without giving it up in between (api.Semaphore would wait on its own slot forever with limit 1).
//
// The KV layout is api.Semaphore's (see record.go), so `consul lock -n` and api.Semaphore interoperate.
package lock
