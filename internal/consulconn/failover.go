package consulconn

import (
	"bytes"
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
// sends it again to each fallback agent in turn. A response is an answer and is returned as is (500 No
// cluster leader included: that is the cluster's state, not the agent's), with one exception: a
// "500 No known Consul servers" means the agent itself is cut off from the servers (a client agent that is
// leaving, or has just started and not joined yet); the request was never forwarded, so it is failed over
// too, and that answer is returned only if no fallback gives a better one.
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
	// degraded is true since a request to the local agent failed, until one succeeds; it only dedupes logs.
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
	eligible := f.eligible(req)
	// held is the local agent's "No known Consul servers" answer: returned if no fallback does better.
	var held *http.Response
	switch {
	case err == nil && (!eligible || !noKnownServers(resp)):
		f.setDegraded(false, req, nil)
		return resp, nil
	case err == nil:
		held = resp
		err = fmt.Errorf("%w (%s)", errNoKnownServers, req.URL.Host)
	case !eligible || !IsConnectionError(err):
		return nil, err
	}
	first := err
	f.setDegraded(true, req, first)
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
			closeBody(held)
			return nil, errors.Join(first, cerr)
		}
		tried++
		resp, err := f.base.RoundTrip(r2)
		if err == nil && noKnownServers(resp) {
			closeBody(resp)
			continue
		}
		if err == nil {
			closeBody(held)
			f.logger.Debug("request served by a fallback agent", "method", req.Method, "path", req.URL.Path, "agent", addr)
			return resp, nil
		}
		if !IsConnectionError(err) {
			closeBody(held)
			return nil, err
		}
		f.logger.Debug("fallback agent unreachable", "method", req.Method, "path", req.URL.Path, "agent", addr,
			"error", err)
	}
	if held != nil {
		return held, nil
	}
	if tried == 0 {
		return nil, first
	}
	return nil, fmt.Errorf("failed to reach consul at %s or any of %d fallback agents: %w", req.URL.Host, tried, first)
}

// errNoKnownServers marks a local agent that answered but has no server to forward to.
var errNoKnownServers = errors.New("consul agent has no known servers")

// noKnownServers reports whether resp is an agent's "500 No known Consul servers": the agent itself is
// cut off from the servers (it is leaving, or has just started and not joined yet), so the request was
// never forwarded and another agent can take it. The body is buffered and put back.
func noKnownServers(resp *http.Response) bool {
	if resp == nil || resp.StatusCode != http.StatusInternalServerError || resp.Body == nil {
		return false
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	rest := resp.Body
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(b), rest), rest}
	return bytes.Contains(b, []byte("No known Consul servers"))
}

func closeBody(resp *http.Response) {
	if resp != nil && resp.Body != nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		_ = resp.Body.Close()
	}
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

func (f *Failover) setDegraded(on bool, req *http.Request, cause error) {
	f.mu.Lock()
	changed := f.degraded != on
	f.degraded = on
	f.mu.Unlock()
	if !changed {
		return
	}
	if on {
		f.logger.Warn("local consul agent unreachable; failing over to fallback agents", "local", req.URL.Host,
			"path", req.URL.Path, "error", cause)
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
