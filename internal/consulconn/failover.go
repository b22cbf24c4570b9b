package consulconn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"

	"github.com/hashicorp/go-hclog"
)

// Failover is an http.RoundTripper that sends each request to the address it names (the local agent) and,
// when that fails at the connection level before any response arrived (dial refused, reset, EOF, timeout),
// sends it again to each fallback agent in turn. A response of any status, including 500, is an answer and is
// returned as is: only an unreachable agent is failed over.
//
// Never failed over:
//   - agent-local endpoints (/v1/agent/...): their answer describes the agent asked, so another agent's
//     answer would be a wrong answer, not a retry;
//   - requests whose context is done, or marked with WithoutFailover;
//   - requests whose body cannot be replayed (no GetBody).
//
// Writes are failed over too. After a dial failure the request never left; after a reset or EOF it may have
// been applied, so callers send writes that are safe to repeat (CAS on ModifyIndex, session renew, KV acquire
// with the same session, catalog register, deletes), which is what the lock package does.
type Failover struct {
	base   http.RoundTripper
	logger hclog.Logger

	mu        sync.RWMutex
	fallbacks []string
	// degraded is true while the last request had to leave the local agent; it only dedupes log lines.
	degraded bool
}

var _ http.RoundTripper = (*Failover)(nil)

// NewFailover wraps base. Fallbacks are set with SetFallbacks.
func NewFailover(base http.RoundTripper, logger hclog.Logger) *Failover {
	if base == nil {
		base = http.DefaultTransport
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &Failover{base: base, logger: logger}
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
	f.mu.RLock()
	defer f.mu.RUnlock()
	return append([]string(nil), f.fallbacks...)
}

type noFailoverKey struct{}

// WithoutFailover marks requests made with ctx as "this agent or nothing" (for example a health probe that
// must reach one specific agent).
func WithoutFailover(ctx context.Context) context.Context {
	return context.WithValue(ctx, noFailoverKey{}, true)
}

// RoundTrip implements http.RoundTripper.
func (f *Failover) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := f.base.RoundTrip(req)
	if err == nil {
		f.setDegraded(false, req, "")
		return resp, nil
	}
	if !f.mayFailover(req, err) {
		return nil, err
	}
	first := err
	tried := 0
	for _, addr := range f.Fallbacks() {
		if addr == req.URL.Host {
			continue
		}
		if req.Context().Err() != nil {
			break
		}
		r2, cerr := retarget(req, addr)
		if cerr != nil {
			return nil, errors.Join(first, cerr)
		}
		tried++
		resp, err := f.base.RoundTrip(r2)
		if err == nil {
			f.setDegraded(true, req, addr)
			return resp, nil
		}
		if !IsConnectionError(err) {
			return nil, err
		}
		f.logger.Debug("fallback agent unreachable", "method", req.Method, "path", req.URL.Path, "agent", addr,
			"error", err)
	}
	if tried == 0 {
		return nil, first
	}
	return nil, fmt.Errorf("failed to reach consul at %s or any of %d fallback agents: %w", req.URL.Host, tried, first)
}

func (f *Failover) mayFailover(req *http.Request, err error) bool {
	if req.Context().Err() != nil || req.Context().Value(noFailoverKey{}) != nil {
		return false
	}
	if IsAgentLocal(req.URL.Path) {
		return false
	}
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return false
	}
	return IsConnectionError(err)
}

func (f *Failover) setDegraded(on bool, req *http.Request, addr string) {
	f.mu.Lock()
	changed := f.degraded != on
	f.degraded = on
	f.mu.Unlock()
	if !changed {
		return
	}
	if on {
		f.logger.Warn("local consul agent unreachable, using a fallback agent", "local", req.URL.Host,
			"agent", addr, "path", req.URL.Path)
	} else {
		f.logger.Info("local consul agent reachable again", "local", req.URL.Host)
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

// IsAgentLocal reports whether path is an agent-local endpoint (/v1/agent/...), possibly behind a reverse-proxy
// path prefix. Such requests are never failed over.
func IsAgentLocal(path string) bool {
	return strings.Contains(path, "/v1/agent/") || strings.HasSuffix(path, "/v1/agent")
}

// IsConnectionError reports whether err means the agent could not be reached or dropped the connection before
// answering: a dial failure, a refused or reset connection, EOF before a response, or a network timeout.
// Context cancellation is not a connection error.
func IsConnectionError(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	// net/http reports a connection closed before the response without wrapping a typed error.
	msg := err.Error()
	return strings.Contains(msg, "server closed idle connection") ||
		strings.Contains(msg, "transport connection broken") ||
		strings.Contains(msg, "connection reset by peer")
}
