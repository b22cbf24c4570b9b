package lock_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"

	"github.com/upgrader-dev/upgrader/internal/consulconn"
	"github.com/upgrader-dev/upgrader/internal/lock"
	"github.com/upgrader-dev/upgrader/internal/testcluster"
)

// block is this package's loopback block: 127.0.11.x.
const block = 11

// tlog sends log lines to t.Log until the test is over (goroutines may outlive a failed test briefly).
type tlog struct {
	mu     sync.Mutex
	t      testing.TB
	prefix string
	done   bool
}

func (w *tlog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
			w.t.Log(w.prefix + line)
		}
	}
	return len(p), nil
}

// newTLog must be called before anything that logs is created: its cleanup then runs last.
func newTLog(t testing.TB, prefix string) *tlog {
	w := &tlog{t: t, prefix: prefix}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return w
}

// setup checks for leaked goroutines once everything else is torn down, starts a cluster of 3 servers and
// the given clients on 127.0.11.x, and returns it with a logger.
func setup(t *testing.T, clients int) (*testcluster.Cluster, hclog.Logger) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs real Consul agents; skipped with -short")
	}
	t.Cleanup(func() {
		goleak.VerifyNone(t,
			// The harness's own API clients keep connections; its agents' reapers end with the agents.
			goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		)
	})
	logger := hclog.New(&hclog.LoggerOptions{Name: "test", Level: hclog.Info, Output: newTLog(t, "")})
	c := testcluster.New(t, testcluster.Options{Block: block, Servers: 3, Clients: clients, Logger: logger})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatalf("failed to start the cluster: %v", err)
	}
	return c, logger
}

// conn is a failover client whose local agent is via and whose fallbacks are every server.
func conn(t *testing.T, c *testcluster.Cluster, via *testcluster.Node, logger hclog.Logger) *consulconn.Conn {
	t.Helper()
	var fallbacks []string
	for _, s := range c.Servers() {
		fallbacks = append(fallbacks, s.HTTPAddr)
	}
	cc, err := consulconn.New(consulconn.Config{Address: via.HTTPAddr, Fallbacks: fallbacks, Logger: logger.Named(via.Name)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Close)
	return cc
}

// newLock builds a Lock and releases it at cleanup (Release is idempotent).
func newLock(t *testing.T, client *api.Client, opts lock.Options, logger hclog.Logger) *lock.Lock {
	t.Helper()
	if opts.Limit == 0 {
		opts.Limit = 1
	}
	opts.Logger = logger
	l, err := lock.New(client, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := l.Release(ctx); err != nil {
			t.Errorf("release at cleanup: %v", err)
		}
	})
	return l
}

// names reports, independently of the package's own decoding, whether a prefix read names session as a
// holder in <prefix>.lock with its contender entry held by the session.
func names(pairs api.KVPairs, prefix, session string) (bool, string) {
	var rec struct {
		Limit   int
		Holders map[string]bool
	}
	held := false
	for _, p := range pairs {
		switch p.Key {
		case prefix + ".lock":
			if err := json.Unmarshal(p.Value, &rec); err != nil {
				return false, "undecodable record: " + err.Error()
			}
		case prefix + session:
			held = p.Session == session
		}
	}
	if !rec.Holders[session] || !held {
		return false, fmt.Sprintf("record holders %v, contender held=%v", rec.Holders, held)
	}
	return true, ""
}

// sampler reads the semaphore consistently every 100ms and counts how often it names the session.
type sampler struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu          sync.Mutex
	named       int
	unreachable int
	violations  int
	firstBad    string
	lastErr     error
	maxGap      time.Duration // longest stretch without a successful read
}

func startSampler(t *testing.T, client *api.Client, prefix, session string) *sampler {
	ctx, cancel := context.WithCancel(context.Background())
	s := &sampler{cancel: cancel, done: make(chan struct{})}
	t.Cleanup(func() { s.stop() })
	go func() {
		defer close(s.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		lastOK := time.Now()
		for {
			rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
			pairs, _, err := client.KV().List(prefix, (&api.QueryOptions{RequireConsistent: true}).WithContext(rctx))
			rcancel()
			if ctx.Err() != nil {
				return
			}
			s.mu.Lock()
			if err != nil {
				s.unreachable++
				s.lastErr = err
			} else {
				s.maxGap = max(s.maxGap, time.Since(lastOK))
				lastOK = time.Now()
				if ok, why := names(pairs, prefix, session); ok {
					s.named++
				} else {
					s.violations++
					if s.firstBad == "" {
						s.firstBad = time.Now().Format("15:04:05.000") + " " + why
					}
				}
			}
			s.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

func (s *sampler) stop() {
	s.cancel()
	<-s.done
}

// report stops sampling, logs the counts and fails the test on any read that did not name the session.
func (s *sampler) report(t *testing.T) {
	t.Helper()
	s.stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	t.Logf("sampler: %d consistent reads named our session, %d violations, %d reads failed (no leader / unreachable; last: %v), longest gap between good reads %s",
		s.named, s.violations, s.unreachable, s.lastErr, s.maxGap.Round(time.Millisecond))
	if s.violations > 0 {
		t.Fatalf("the lock key stopped naming our session: %d violations, first at %s", s.violations, s.firstBad)
	}
	if s.named == 0 {
		t.Fatalf("no successful read at all")
	}
}

// waitFor polls cond every interval until it is true, it errors for good, or ctx ends.
func waitFor(ctx context.Context, what string, interval time.Duration, cond func(ctx context.Context) (bool, error)) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var last error
	for {
		ok, err := cond(ctx)
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out waiting for %s (last error: %v): %w", what, last, ctx.Err())
		case <-tick.C:
		}
	}
}

// isOpen reports whether the lost channel is still open.
func isOpen(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return false
	default:
		return true
	}
}

// sessionExists reads a session consistently through client.
func sessionExists(ctx context.Context, client *api.Client, id string) (bool, error) {
	e, _, err := client.Session().Info(id, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	return e != nil, err
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
