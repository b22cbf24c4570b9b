package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/upgrader-dev/upgrader/internal/testcluster"
)

// Monitor measures a rollout from the outside, the way an operator's dashboards would, and never trusts
// the upgrader's own reports. Every node gets its own probe loop (every 20ms, local-only endpoints: a
// server's /v1/status/leader answers from its own raft state, a client's /v1/agent/self from itself), so
// a restart of a few hundred milliseconds cannot fall between samples. A slower loop reads the raft
// configuration and the lock keys; a third writes a KV key every 10ms through a node the rollout does
// not restart.
type Monitor struct {
	c             *testcluster.Cluster
	writer        *api.Client
	lockKey       string
	clients       []*testcluster.Node
	clientLockKey string

	probeEvery, sampleEvery, writeEvery time.Duration

	mu      sync.Mutex
	probes  map[string][]probe
	samples []Sample
	writes  []writeResult
}

type probe struct {
	at     time.Time
	up     bool
	leader string // servers only: the raft address this server names ("" = none)
}

// Sample is one read of the cluster-wide state. A lock read that failed is recorded as not known, never
// as "no holder".
type Sample struct {
	At              time.Time
	Voters          map[string]bool // node -> voter, from the raft configuration (nil: unknown)
	LockKnown       bool
	LockHold        []string
	ClientLockKnown bool
	ClientLockHold  []string
}

type writeResult struct {
	at time.Time
	ok bool
}

// NewMonitor watches c's servers and the server lock key, writing through writer (a node that is not
// upgraded).
func NewMonitor(c *testcluster.Cluster, writer *testcluster.Node, lockKey string) *Monitor {
	return &Monitor{c: c, writer: writer.API(), lockKey: lockKey, probes: map[string][]probe{},
		probeEvery: 20 * time.Millisecond, sampleEvery: 50 * time.Millisecond, writeEvery: 10 * time.Millisecond}
}

// WatchClients also probes the given clients and reads the client lock key, so the report can tell
// whether the client lock named its holder while that holder's agent was down. Call before Run.
func (m *Monitor) WatchClients(clients []*testcluster.Node, clientLockKey string) {
	m.clients, m.clientLockKey = clients, clientLockKey
}

// Run measures until ctx ends.
func (m *Monitor) Run(ctx context.Context) {
	var wg sync.WaitGroup
	loop := func(f func()) {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	for _, n := range m.c.Servers() {
		loop(func() { m.probeLoop(ctx, n, true) })
	}
	for _, n := range m.clients {
		loop(func() { m.probeLoop(ctx, n, false) })
	}
	loop(func() { m.sampleLoop(ctx) })
	loop(func() { m.writeLoop(ctx) })
	wg.Wait()
}

func (m *Monitor) probeLoop(ctx context.Context, n *testcluster.Node, server bool) {
	every(ctx, m.probeEvery, func() {
		cctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
		defer cancel()
		p := probe{}
		var err error
		if server {
			err = query(cctx, n.API(), "/v1/status/leader", &p.leader)
		} else {
			var self map[string]any
			err = query(cctx, n.API(), "/v1/agent/self", &self)
		}
		if ctx.Err() != nil {
			return
		}
		p.at, p.up = time.Now(), err == nil
		m.mu.Lock()
		m.probes[n.Name] = append(m.probes[n.Name], p)
		m.mu.Unlock()
	})
}

func (m *Monitor) sampleLoop(ctx context.Context) {
	every(ctx, m.sampleEvery, func() {
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		q := (&api.QueryOptions{AllowStale: true}).WithContext(cctx)
		s := Sample{}
		if cfg, err := m.writer.Operator().RaftGetConfiguration(q); err == nil {
			s.Voters = map[string]bool{}
			for _, srv := range cfg.Servers {
				s.Voters[srv.Node] = srv.Voter
			}
		}
		s.LockHold, s.LockKnown = m.holders(q, m.lockKey)
		if m.clientLockKey != "" {
			s.ClientLockHold, s.ClientLockKnown = m.holders(q, m.clientLockKey)
		}
		if ctx.Err() != nil {
			return
		}
		// The reads above took time: stamp the sample with its end, the conservative choice for a
		// "holder present while down" check (a holder seen later was also there earlier only if it
		// never changed, which the lock's own tests prove separately).
		s.At = time.Now()
		m.mu.Lock()
		m.samples = append(m.samples, s)
		m.mu.Unlock()
	})
}

func (m *Monitor) writeLoop(ctx context.Context) {
	i := 0
	every(ctx, m.writeEvery, func() {
		i++
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := m.writer.KV().Put(&api.KVPair{Key: "monitor/write", Value: []byte(fmt.Sprint(i))}, (&api.WriteOptions{}).WithContext(wctx))
		if ctx.Err() != nil {
			return
		}
		m.mu.Lock()
		m.writes = append(m.writes, writeResult{at: time.Now(), ok: err == nil})
		m.mu.Unlock()
	})
}

// every runs f every d (skipping ticks while f runs) until ctx ends.
func every(ctx context.Context, d time.Duration, f func()) {
	tick := time.NewTicker(d)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			f()
		}
	}
}

func query(ctx context.Context, c *api.Client, path string, out any) error {
	_, err := c.Raw().Query(path, out, (&api.QueryOptions{}).WithContext(ctx))
	return err
}

// holders reads a semaphore's .lock key and returns the sessions it names; ok is false when the read
// failed (unknown, not empty).
func (m *Monitor) holders(q *api.QueryOptions, key string) ([]string, bool) {
	pair, _, err := m.writer.KV().Get(key, q)
	if err != nil {
		return nil, false
	}
	if pair == nil {
		return nil, true
	}
	var v struct{ Holders map[string]bool }
	if json.Unmarshal(pair.Value, &v) != nil {
		return nil, false
	}
	var out []string
	for h, held := range v.Holders {
		if held {
			out = append(out, h)
		}
	}
	sort.Strings(out)
	return out, true
}
