package consulconn

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Failover is an http.RoundTripper that sends each request to the address it names (the local agent) and,
// when that agent is unreachable, to each fallback agent in turn. Unreachable means: a connection-level
// failure before any response (dial refused, reset, EOF, timeout), no response headers within a bound
// (DefaultHeaderTimeout, plus the wait of a blocking query: a frozen agent), or the agent's own
// "500 No known Consul servers" (a client agent that is leaving, or has just started and not joined: the
// request was never forwarded). Any other response is an answer and is returned as is, 500 No cluster leader
// included: that is the cluster's state, not the agent's. After the local agent failed, it is tried last for
// a cooldown (DefaultCooldown), so that a frozen agent does not cost every request its full timeout.
//
// Never failed over (sent once, to the address named, with no bound):
//   - agent-local endpoints (/v1/agent/...): their answer describes the agent asked, so another agent's
//     answer would be a wrong answer, not a retry;
//   - requests whose context is done, or marked with WithoutFailover;
//   - requests whose body cannot be replayed (no GetBody).
//
// Writes are failed over too. After a dial failure the request never left; after a reset, EOF or timeout it
// may have been applied, so callers send writes that are safe to repeat (CAS on ModifyIndex, session renew,
// KV acquire with the same session, catalog register, deletes), which is what the lock package does.
type Failover struct {
	base          http.RoundTripper
	logger        hclog.Logger
	headerTimeout time.Duration
	cooldown      time.Duration
	now           func() time.Time

	mu        sync.Mutex
	fallbacks []string
	downUntil map[string]time.Time // local agents that failed recently: tried last until then
	degraded  bool                 // a request to a local agent failed and none succeeded since (dedupes logs)
}

var _ http.RoundTripper = (*Failover)(nil)

// DefaultHeaderTimeout is how long an agent may take to start answering a request that is not a blocking
// query (a blocking query gets its wait, plus Consul's jitter of wait/16, on top). It is above Consul's
// rpc_hold_timeout (7s: how long a server holds a request while there is no leader), so an election is
// never mistaken for a frozen agent, and below the 10s a lock renewal has left when it is sent (TTL 15s,
// sent every 5s), so a renewal through a frozen local agent still reaches a fallback in time.
const DefaultHeaderTimeout = 8 * time.Second

// DefaultCooldown is how long a local agent that failed is tried after the fallbacks instead of before.
const DefaultCooldown = 10 * time.Second

// NewFailover wraps base with DefaultHeaderTimeout and DefaultCooldown. Fallbacks are set with SetFallbacks.
func NewFailover(base http.RoundTripper, logger hclog.Logger) *Failover {
	if base == nil {
		base = http.DefaultTransport
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &Failover{base: base, logger: logger, headerTimeout: DefaultHeaderTimeout, cooldown: DefaultCooldown,
		now: time.Now, downUntil: map[string]time.Time{}}
}

// SetFallbacks replaces the fallback list ("host:port", tried in order).
func (f *Failover) SetFallbacks(addrs []string) {
	cp := append([]string(nil), addrs...)
	f.mu.Lock()
	f.fallbacks = cp
	f.mu.Unlock()
}

// Fallbacks returns a copy of the fallback list.
func (f *Failover) Fallbacks() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.fallbacks...)
}

type noFailoverKey struct{}

// WithoutFailover marks requests made with ctx as "this agent or nothing" (for example a health probe that
// must reach one specific agent).
func WithoutFailover(ctx context.Context) context.Context {
	return context.WithValue(ctx, noFailoverKey{}, true)
}

// eligible reports whether req may be sent to another agent at all.
func (f *Failover) eligible(req *http.Request) bool {
	if req.Context().Err() != nil || req.Context().Value(noFailoverKey{}) != nil {
		return false
	}
	if IsAgentLocal(req.URL.Path) {
		return false
	}
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

// targets returns the agents to try for a request naming local: local first, or last while it cools down.
func (f *Failover) targets(local string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.fallbacks)+1)
	for _, a := range f.fallbacks {
		if a != local {
			out = append(out, a)
		}
	}
	if until, ok := f.downUntil[local]; ok && f.now().Before(until) {
		return append(out, local)
	}
	return append([]string{local}, out...)
}

// RoundTrip implements http.RoundTripper.
func (f *Failover) RoundTrip(req *http.Request) (*http.Response, error) {
	if !f.eligible(req) {
		return f.base.RoundTrip(req)
	}
	local := req.URL.Host
	var (
		held  *http.Response // a "No known Consul servers" answer: returned if nobody does better
		first error
		tried int
	)
	for _, addr := range f.targets(local) {
		if req.Context().Err() != nil {
			break
		}
		r := req
		if addr != local {
			var err error
			if r, err = retarget(req, addr); err != nil {
				closeBody(held)
				return nil, errors.Join(first, err)
			}
		}
		tried++
		resp, err := f.attempt(r)
		switch {
		case err == nil && noKnownServers(resp):
			err = fmt.Errorf("%w (%s)", errNoKnownServers, addr)
			if held == nil {
				held = resp
			} else {
				closeBody(resp)
			}
		case err == nil:
			closeBody(held)
			f.served(req, addr, local)
			return resp, nil
		case !IsConnectionError(err):
			closeBody(held)
			return nil, err
		}
		if first == nil {
			first = err
		}
		if addr == local {
			f.localFailed(req, err)
		} else {
			f.logger.Debug("fallback agent unreachable", "method", req.Method, "path", req.URL.Path, "agent", addr, "error", err)
		}
	}
	switch {
	case held != nil:
		return held, nil
	case first == nil:
		return nil, req.Context().Err()
	case tried == 1:
		return nil, first
	}
	return nil, fmt.Errorf("failed to reach consul at %s or any of %d fallback agents: %w", local, tried-1, first)
}

// localFailed starts the local agent's cooldown and logs the first failure.
func (f *Failover) localFailed(req *http.Request, err error) {
	f.mu.Lock()
	if f.cooldown > 0 {
		f.downUntil[req.URL.Host] = f.now().Add(f.cooldown)
	}
	changed := !f.degraded
	f.degraded = true
	f.mu.Unlock()
	if changed {
		f.logger.Warn("local consul agent unreachable; failing over to fallback agents", "local", req.URL.Host,
			"path", req.URL.Path, "error", err)
	}
}

// served records which agent answered.
func (f *Failover) served(req *http.Request, addr, local string) {
	if addr != local {
		f.logger.Debug("request served by a fallback agent", "method", req.Method, "path", req.URL.Path, "agent", addr)
		return
	}
	f.mu.Lock()
	delete(f.downUntil, local)
	changed := f.degraded
	f.degraded = false
	f.mu.Unlock()
	if changed {
		f.logger.Info("local consul agent reachable again", "local", local)
	}
}

// retarget clones req for another agent, with a fresh copy of the body.
func retarget(req *http.Request, addr string) (*http.Request, error) {
	r2 := req.Clone(req.Context())
	r2.URL.Host = addr
	r2.Host = addr
	if req.Body != nil && req.Body != http.NoBody {
		body, err := req.GetBody()
		if err != nil {
			return nil, fmt.Errorf("failed to replay the request body: %w", err)
		}
		r2.Body = body
	}
	return r2, nil
}
