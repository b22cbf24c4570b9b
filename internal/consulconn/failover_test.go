package consulconn

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"
)

// agent is an httptest stand-in for a Consul agent's HTTP API that records what it was asked.
type agent struct {
	srv *httptest.Server

	mu     sync.Mutex
	paths  []string
	tokens []string
	bodies []string
}

func newAgent(t *testing.T, tlsOn bool, h http.HandlerFunc) *agent {
	t.Helper()
	a := &agent{}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.paths = append(a.paths, r.Method+" "+r.URL.Path)
		a.tokens = append(a.tokens, r.Header.Get("X-Consul-Token"))
		a.bodies = append(a.bodies, string(b))
		a.mu.Unlock()
		if h != nil {
			h(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Consul-Index", "7")
		switch {
		case strings.HasPrefix(r.URL.Path, "/v1/kv/") && r.Method == http.MethodGet:
			fmt.Fprintf(w, `[{"Key":%q,"Value":"aGk=","ModifyIndex":7}]`, strings.TrimPrefix(r.URL.Path, "/v1/kv/"))
		case strings.HasPrefix(r.URL.Path, "/v1/kv/"):
			fmt.Fprint(w, "true")
		case r.URL.Path == "/v1/agent/self":
			fmt.Fprint(w, `{"Config":{"NodeName":"x"}}`)
		default:
			fmt.Fprint(w, "{}")
		}
	})
	if tlsOn {
		a.srv = httptest.NewTLSServer(handler)
	} else {
		a.srv = httptest.NewServer(handler)
	}
	t.Cleanup(a.srv.Close)
	return a
}

func (a *agent) addr() string { return a.srv.Listener.Addr().String() }

func (a *agent) seen() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.paths...)
}

// deadAddr returns a loopback address on which nothing listens (connection refused).
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// logBuffer collects log output so tests can assert that secrets never reach it.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newConn(t *testing.T, cfg Config) (*Conn, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Trace, Output: io.MultiWriter(logs, tWriter{t})})
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(c.Close)
	return c, logs
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func clearConsulEnv(t *testing.T) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "CONSUL_") {
			t.Setenv(k, "")
		}
	}
}

const secret = "s3cr3t-token-0000-1111"

func TestFailover_ReadGoesToFallbackWhenLocalRefuses(t *testing.T) {
	verifyNoLeaks(t)
	clearConsulEnv(t)
	fb := newAgent(t, false, nil)
	c, logs := newConn(t, Config{Address: deadAddr(t), Token: secret, Fallbacks: []string{deadAddr(t), fb.addr()}})

	pair, _, err := c.API().KV().Get("upgrader/x", (&api.QueryOptions{}).WithContext(context.Background()))
	if err != nil {
		t.Fatalf("Get through failover: %v", err)
	}
	if pair == nil || string(pair.Value) != "hi" {
		t.Fatalf("unexpected pair %+v", pair)
	}
	if got := fb.seen(); len(got) != 1 || got[0] != "GET /v1/kv/upgrader/x" {
		t.Fatalf("fallback saw %v", got)
	}
	if fb.tokens[0] != secret {
		t.Fatalf("token not forwarded to the fallback")
	}
	if strings.Contains(logs.String(), secret) {
		t.Fatalf("token leaked into logs:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "failing over") {
		t.Fatalf("failover not logged:\n%s", logs.String())
	}
}

func TestFailover_WriteBodyIsReplayed(t *testing.T) {
	verifyNoLeaks(t)
	clearConsulEnv(t)
	fb := newAgent(t, false, nil)
	c, _ := newConn(t, Config{Address: deadAddr(t), Fallbacks: []string{fb.addr()}})

	ok, _, err := c.API().KV().CAS(&api.KVPair{Key: "k", Value: []byte("payload"), ModifyIndex: 3}, nil)
	if err != nil || !ok {
		t.Fatalf("CAS through failover: ok=%v err=%v", ok, err)
	}
	if fb.bodies[0] != "payload" {
		t.Fatalf("fallback got body %q", fb.bodies[0])
	}
}

func TestFailover_Never(t *testing.T) {
	clearConsulEnv(t)
	cases := []struct {
		name string
		do   func(c *Conn) error
	}{
		{"agent-local endpoint", func(c *Conn) error {
			_, err := c.API().Agent().Self()
			return err
		}},
		{"WithoutFailover", func(c *Conn) error {
			_, _, err := c.API().KV().Get("k", (&api.QueryOptions{}).WithContext(WithoutFailover(context.Background())))
			return err
		}},
		{"canceled context", func(c *Conn) error {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_, _, err := c.API().KV().Get("k", (&api.QueryOptions{}).WithContext(ctx))
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			verifyNoLeaks(t)
			fb := newAgent(t, false, nil)
			c, _ := newConn(t, Config{Address: deadAddr(t), Fallbacks: []string{fb.addr()}})
			if err := tc.do(c); err == nil {
				t.Fatal("expected an error from the unreachable local agent")
			}
			if got := fb.seen(); len(got) != 0 {
				t.Fatalf("fallback must not be asked, saw %v", got)
			}
		})
	}
}

func TestFailover_AnswerIsNotFailedOver(t *testing.T) {
	verifyNoLeaks(t)
	clearConsulEnv(t)
	local := newAgent(t, false, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "No cluster leader", http.StatusInternalServerError)
	})
	fb := newAgent(t, false, nil)
	c, _ := newConn(t, Config{Address: local.addr(), Fallbacks: []string{fb.addr()}})
	_, _, err := c.API().KV().Get("k", nil)
	var se api.StatusError
	if !errors.As(err, &se) || se.Code != 500 {
		t.Fatalf("want the local 500 back, got %v", err)
	}
	if got := fb.seen(); len(got) != 0 {
		t.Fatalf("a 500 is an answer; fallback saw %v", got)
	}
}

func TestFailover_ConnectionDroppedBeforeResponse(t *testing.T) {
	verifyNoLeaks(t)
	clearConsulEnv(t)
	local := newAgent(t, false, func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close() // like an agent killed while a blocking query was in flight
		}
	})
	fb := newAgent(t, false, nil)
	c, _ := newConn(t, Config{Address: local.addr(), Fallbacks: []string{fb.addr()}})
	if _, _, err := c.API().KV().Get("k", &api.QueryOptions{WaitIndex: 5, WaitTime: time.Second}); err != nil {
		t.Fatalf("Get: %v", err)
	}
	if got := fb.seen(); len(got) != 1 {
		t.Fatalf("fallback saw %v", got)
	}
}

func TestFailover_AllUnreachable(t *testing.T) {
	verifyNoLeaks(t)
	clearConsulEnv(t)
	c, _ := newConn(t, Config{Address: deadAddr(t), Fallbacks: []string{deadAddr(t), deadAddr(t)}})
	_, _, err := c.API().KV().Get("k", nil)
	if err == nil || !strings.Contains(err.Error(), "any of 2 fallback agents") {
		t.Fatalf("want an error naming the fallbacks, got %v", err)
	}
	if !api.IsRetryableError(err) {
		t.Fatalf("an unreachable cluster must stay retryable for the consul api: %v", err)
	}
}

func TestFailover_LocalPreferredAgain(t *testing.T) {
	verifyNoLeaks(t)
	clearConsulEnv(t)
	fb := newAgent(t, false, nil)
	// Reserve an address, start with nothing on it, then bring the "local agent" up on it.
	addr := deadAddr(t)
	c, logs := newConn(t, Config{Address: addr, Fallbacks: []string{fb.addr()}})
	now := time.Now()
	c.failover.now = func() time.Time { return now }
	get := func() {
		t.Helper()
		if _, _, err := c.API().KV().Get("k", nil); err != nil {
			t.Fatal(err)
		}
	}
	get() // local refuses: fallback
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot rebind %s: %v", addr, err)
	}
	local := &agent{}
	srv := &httptest.Server{Listener: l, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		local.mu.Lock()
		local.paths = append(local.paths, r.URL.Path)
		local.mu.Unlock()
		w.Header().Set("X-Consul-Index", "1")
		fmt.Fprint(w, `[]`)
	})}}
	srv.Start()
	defer srv.Close()
	get() // local is back, but cools down: fallback first
	if len(local.seen()) != 0 || len(fb.seen()) != 2 {
		t.Fatalf("during the cooldown: local saw %v, fallback saw %v", local.seen(), fb.seen())
	}
	now = now.Add(DefaultCooldown + time.Second)
	get() // cooldown over: local first again
	if len(local.seen()) != 1 || len(fb.seen()) != 2 {
		t.Fatalf("after the cooldown: local saw %v, fallback saw %v", local.seen(), fb.seen())
	}
	if !strings.Contains(logs.String(), "reachable again") {
		t.Fatalf("recovery not logged:\n%s", logs.String())
	}
	c.Close()
}

func TestNew_EnvironmentIsHonoured(t *testing.T) {
	verifyNoLeaks(t)
	clearConsulEnv(t)
	local := newAgent(t, false, nil)
	t.Setenv("CONSUL_HTTP_ADDR", local.addr())
	t.Setenv("CONSUL_HTTP_TOKEN", secret)
	c, _ := newConn(t, Config{})
	if _, _, err := c.API().KV().Get("k", nil); err != nil {
		t.Fatal(err)
	}
	if local.tokens[0] != secret {
		t.Fatalf("CONSUL_HTTP_TOKEN not sent")
	}

	// Overrides beat the environment.
	other := newAgent(t, false, nil)
	c2, _ := newConn(t, Config{Address: "http://" + other.addr(), Token: "override"})
	if _, _, err := c2.API().KV().Get("k", nil); err != nil {
		t.Fatal(err)
	}
	if len(other.seen()) != 1 || other.tokens[0] != "override" {
		t.Fatalf("override not used: %v %v", other.seen(), other.tokens)
	}
}

func TestNew_TLSFromEnvironmentAndFailover(t *testing.T) {
	verifyNoLeaks(t)
	clearConsulEnv(t)
	fb := newAgent(t, true, nil)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: fb.srv.Certificate().Raw})
	if err := os.WriteFile(ca, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CONSUL_CACERT", ca)
	t.Setenv("CONSUL_HTTP_SSL", "true")
	t.Setenv("CONSUL_HTTP_ADDR", deadAddr(t))
	c, _ := newConn(t, Config{Fallbacks: []string{fb.addr()}})
	if c.Scheme() != "https" {
		t.Fatalf("scheme %q", c.Scheme())
	}
	if _, _, err := c.API().KV().Get("k", nil); err != nil {
		t.Fatalf("TLS request through the fallback: %v", err)
	}
	// Without the CA the same request must fail verification, not silently succeed.
	t.Setenv("CONSUL_CACERT", "")
	c2, _ := newConn(t, Config{Fallbacks: []string{fb.addr()}})
	_, _, err := c2.API().KV().Get("k", nil)
	var uerr x509.UnknownAuthorityError
	if err == nil || (!errors.As(err, &uerr) && !strings.Contains(err.Error(), "certificate")) {
		t.Fatalf("want a certificate error, got %v", err)
	}
}

func TestIsConnectionError(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"dial refused", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, true},
		{"dial timeout", &net.OpError{Op: "dial", Err: errors.New("i/o timeout")}, true},
		{"read reset", &net.OpError{Op: "read", Err: syscall.ECONNRESET}, true},
		{"eof", fmt.Errorf("wrapped: %w", io.EOF), true},
		{"unexpected eof", io.ErrUnexpectedEOF, true},
		{"canceled", context.Canceled, false},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), false},
		{"status 500", api.StatusError{Code: 500, Body: "No cluster leader"}, false},
		{"tls", x509.UnknownAuthorityError{}, false},
		{"broken", errors.New("net/http: HTTP/1.x transport connection broken: foo"), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsConnectionError(tc.err); got != tc.want {
				t.Fatalf("IsConnectionError(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestIsAgentLocal(t *testing.T) {
	cases := map[string]bool{
		"/v1/agent/self":                true,
		"/v1/agent/members":             true,
		"/proxy/v1/agent/self":          true,
		"/v1/kv/upgrader/agent/x":       false,
		"/v1/session/renew/abc":         false,
		"/v1/catalog/register":          false,
		"/v1/status/leader":             false,
		"/v1/operator/autopilot/health": false,
	}
	for p, want := range cases {
		if got := IsAgentLocal(p); got != want {
			t.Errorf("IsAgentLocal(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestNormalizeAddrs(t *testing.T) {
	cases := []struct {
		in      []string
		want    []string
		wantErr bool
	}{
		{nil, []string{}, false},
		{[]string{"127.0.0.1:8500", " http://127.0.0.2:8500/ ", "127.0.0.1:8500", ""}, []string{"127.0.0.1:8500", "127.0.0.2:8500"}, false},
		{[]string{"[::1]:8500"}, []string{"[::1]:8500"}, false},
		{[]string{"127.0.0.1"}, nil, true},
	}
	for _, tc := range cases {
		got, err := NormalizeAddrs(tc.in)
		if (err != nil) != tc.wantErr {
			t.Fatalf("NormalizeAddrs(%q) err=%v", tc.in, err)
		}
		if err == nil && strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Fatalf("NormalizeAddrs(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if err != nil && !errors.Is(err, ErrConfig) {
			t.Fatalf("error %v is not ErrConfig", err)
		}
	}
}

func TestSplitAddress(t *testing.T) {
	cases := []struct {
		addr, def, scheme, host string
		wantErr                 bool
	}{
		{"127.0.0.1:8500", "http", "http", "127.0.0.1:8500", false},
		{"https://10.0.0.1:8501", "http", "https", "10.0.0.1:8501", false},
		{"http://10.0.0.1:8501", "https", "https", "10.0.0.1:8501", false},
		{"http://10.0.0.1:8500/consul", "http", "http", "10.0.0.1:8500", false},
		{"unix:///run/consul.sock", "http", "unix", "/run/consul.sock", false},
		{"ftp://x:1", "http", "", "", true},
		{"", "http", "", "", true},
	}
	for _, tc := range cases {
		s, h, err := splitAddress(tc.addr, tc.def)
		if (err != nil) != tc.wantErr || s != tc.scheme || h != tc.host {
			t.Errorf("splitAddress(%q,%q) = %q,%q,%v; want %q,%q,err=%v", tc.addr, tc.def, s, h, err, tc.scheme, tc.host, tc.wantErr)
		}
	}
}

// verifyNoLeaks checks for leaked goroutines after every other cleanup (idle connections closed, servers down).
func verifyNoLeaks(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

func TestFailover_AgentWithoutServers(t *testing.T) {
	clearConsulEnv(t)
	noServers := func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "No known Consul servers", http.StatusInternalServerError)
	}
	t.Run("a fallback answers instead", func(t *testing.T) {
		verifyNoLeaks(t)
		local := newAgent(t, false, noServers)
		fb := newAgent(t, false, nil)
		c, _ := newConn(t, Config{Address: local.addr(), Fallbacks: []string{fb.addr()}})
		ok, _, err := c.API().KV().CAS(&api.KVPair{Key: "k", Value: []byte("v"), ModifyIndex: 1}, nil)
		if err != nil || !ok {
			t.Fatalf("CAS: %v %v", ok, err)
		}
		if len(local.seen()) != 1 || len(fb.seen()) != 1 || fb.bodies[0] != "v" {
			t.Fatalf("local %v fallback %v %q", local.seen(), fb.seen(), fb.bodies)
		}
	})
	t.Run("nobody better: the local answer comes back intact", func(t *testing.T) {
		verifyNoLeaks(t)
		local := newAgent(t, false, noServers)
		fb := newAgent(t, false, noServers)
		c, _ := newConn(t, Config{Address: local.addr(), Fallbacks: []string{deadAddr(t), fb.addr()}})
		_, _, err := c.API().KV().Get("k", nil)
		var se api.StatusError
		if !errors.As(err, &se) || se.Code != 500 || se.Body != "No known Consul servers" {
			t.Fatalf("want the local 500 with its body, got %v", err)
		}
	})
	t.Run("never for agent endpoints", func(t *testing.T) {
		verifyNoLeaks(t)
		local := newAgent(t, false, noServers)
		fb := newAgent(t, false, nil)
		c, _ := newConn(t, Config{Address: local.addr(), Fallbacks: []string{fb.addr()}})
		if _, err := c.API().Agent().Self(); err == nil {
			t.Fatal("want the local error")
		}
		if len(fb.seen()) != 0 {
			t.Fatalf("fallback saw %v", fb.seen())
		}
	})
}

func TestFailover_HeaderTimeout(t *testing.T) {
	clearConsulEnv(t)
	frozen := func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() } // accepts, never answers
	slow := func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(400 * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("X-Consul-Index", "9")
		fmt.Fprint(w, "[]")
	}
	cases := []struct {
		name         string
		local        http.HandlerFunc
		do           func(c *Conn) error
		wantFallback bool
	}{
		{"frozen agent is failed over", frozen, func(c *Conn) error {
			_, _, err := c.API().KV().Get("k", nil)
			return err
		}, true},
		{"frozen agent, write is failed over with its body", frozen, func(c *Conn) error {
			_, err := c.API().KV().Put(&api.KVPair{Key: "k", Value: []byte("v")}, nil)
			return err
		}, true},
		{"a blocking query may take its wait", slow, func(c *Conn) error {
			_, _, err := c.API().KV().List("k", &api.QueryOptions{WaitIndex: 5, WaitTime: time.Second})
			return err
		}, false},
		{"a snapshot is not bounded", slow, func(c *Conn) error {
			rc, _, err := c.API().Snapshot().Save(nil)
			if err == nil {
				rc.Close()
			}
			return err
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			verifyNoLeaks(t)
			local := newAgent(t, false, tc.local)
			fb := newAgent(t, false, nil)
			c, _ := newConn(t, Config{Address: local.addr(), Fallbacks: []string{fb.addr()}, HeaderTimeout: 150 * time.Millisecond})
			start := time.Now()
			if err := tc.do(c); err != nil {
				t.Fatalf("request: %v", err)
			}
			if got := len(fb.seen()) == 1; got != tc.wantFallback {
				t.Fatalf("fallback used=%v, want %v (local saw %v)", got, tc.wantFallback, local.seen())
			}
			t.Logf("took %s", time.Since(start).Round(time.Millisecond))
		})
	}
}

func TestAttemptTimeout(t *testing.T) {
	f := NewFailover(nil, nil)
	cases := []struct {
		url  string
		want time.Duration
	}{
		{"http://a/v1/kv/x", DefaultHeaderTimeout},
		{"http://a/v1/kv/x?index=0", DefaultHeaderTimeout},
		{"http://a/v1/kv/x?index=12&wait=10000ms", 10*time.Second + 625*time.Millisecond + DefaultHeaderTimeout},
		{"http://a/v1/kv/x?index=12&wait=1m", time.Minute + 3750*time.Millisecond + DefaultHeaderTimeout},
		{"http://a/v1/kv/x?index=12", 5*time.Minute + 5*time.Minute/16 + DefaultHeaderTimeout},
		{"http://a/v1/snapshot", 0},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest(http.MethodGet, tc.url, nil)
		if got := f.attemptTimeout(req); got != tc.want {
			t.Errorf("attemptTimeout(%s) = %v, want %v", tc.url, got, tc.want)
		}
	}
}
