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
	"sync/atomic"
	"time"
)

// consulMaxWait is Consul's default (and cap) for a blocking query without an explicit wait.
const consulMaxWait = 5 * time.Minute

// attemptTimeout is how long one attempt of req may wait for response headers (0: no bound). Never for a
// snapshot, whose headers come only once the whole snapshot is taken.
func (f *Failover) attemptTimeout(req *http.Request) time.Duration {
	if f.headerTimeout <= 0 || strings.HasSuffix(req.URL.Path, "/v1/snapshot") {
		return 0
	}
	q := req.URL.Query()
	if idx := q.Get("index"); idx == "" || idx == "0" {
		return f.headerTimeout
	}
	wait := consulMaxWait
	if w, err := time.ParseDuration(q.Get("wait")); err == nil && w > 0 && w < consulMaxWait {
		wait = w
	}
	return wait + wait/16 + f.headerTimeout
}

// attempt sends req once, bounding the wait for response headers (see attemptTimeout). The bound is lifted
// once headers arrive: the body is read under the caller's context only.
func (f *Failover) attempt(req *http.Request) (*http.Response, error) {
	d := f.attemptTimeout(req)
	if d <= 0 {
		return f.base.RoundTrip(req)
	}
	ctx, cancel := context.WithCancel(req.Context())
	var fired atomic.Bool
	timer := time.AfterFunc(d, func() {
		fired.Store(true)
		cancel()
	})
	resp, err := f.base.RoundTrip(req.WithContext(ctx))
	stopped := timer.Stop()
	if err == nil && stopped {
		resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
		return resp, nil
	}
	cancel()
	if err == nil { // headers arrived just as the timer fired: the body is unreadable now
		closeBody(resp)
		err = context.Canceled
	}
	if fired.Load() && req.Context().Err() == nil {
		return nil, &noResponseError{after: d, err: err}
	}
	return nil, err
}

// noResponseError is an attempt that got no response headers in time.
type noResponseError struct {
	after time.Duration
	err   error
}

var _ net.Error = (*noResponseError)(nil)

func (e *noResponseError) Error() string {
	return fmt.Sprintf("no response within %s: %v", e.after, e.err)
}
func (e *noResponseError) Unwrap() error   { return e.err }
func (e *noResponseError) Timeout() bool   { return true }
func (e *noResponseError) Temporary() bool { return true }

// cancelOnClose releases an attempt's context with its body.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// errNoKnownServers marks an agent that answered but has no server to forward to.
var errNoKnownServers = errors.New("consul agent has no known servers")

// noKnownServers reports whether resp is an agent's "500 No known Consul servers": the agent itself is
// cut off from the servers, so the request was never forwarded. The body is buffered and put back.
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
