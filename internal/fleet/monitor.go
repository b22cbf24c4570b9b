package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/upgrader-dev/upgrader/internal/testcluster"
)

// Monitor measures a rollout from the outside, the way an operator's dashboards would: it samples every
// server's own view of the leader and the raft configuration, writes a KV key through a node the rollout
// does not restart, and watches the server lock key. It never trusts the upgrader's own reports.
type Monitor struct {
	c        *testcluster.Cluster
	writer   *api.Client
	lockKey  string
	interval time.Duration
	writeInt time.Duration

	mu      sync.Mutex
	samples []Sample
	writes  []writeResult
}

// Sample is one round of looking at every server.
type Sample struct {
	At       time.Time
	Up       map[string]bool   // server answered /v1/status/leader
	Leaders  map[string]string // server -> leader it reports ("" = none)
	Voters   map[string]bool   // from the raft configuration of an answering server
	LockHold []string          // sessions holding the server lock
}

type writeResult struct {
	at time.Time
	ok bool
}

// NewMonitor watches c, writing through writer (a node that is not upgraded).
func NewMonitor(c *testcluster.Cluster, writer *testcluster.Node, lockKey string) *Monitor {
	return &Monitor{c: c, writer: writer.API(), lockKey: lockKey, interval: 50 * time.Millisecond, writeInt: 10 * time.Millisecond}
}

// Run samples until ctx ends.
func (m *Monitor) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); m.sampleLoop(ctx) }()
	go func() { defer wg.Done(); m.writeLoop(ctx) }()
	wg.Wait()
}

func (m *Monitor) writeLoop(ctx context.Context) {
	tick := time.NewTicker(m.writeInt)
	defer tick.Stop()
	i := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		i++
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := m.writer.KV().Put(&api.KVPair{Key: "monitor/write", Value: []byte(fmt.Sprint(i))}, (&api.WriteOptions{}).WithContext(wctx))
		cancel()
		if ctx.Err() != nil {
			return
		}
		m.mu.Lock()
		m.writes = append(m.writes, writeResult{at: time.Now(), ok: err == nil})
		m.mu.Unlock()
	}
}

func (m *Monitor) sampleLoop(ctx context.Context) {
	tick := time.NewTicker(m.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s := m.sample(ctx)
		m.mu.Lock()
		m.samples = append(m.samples, s)
		m.mu.Unlock()
	}
}

func (m *Monitor) sample(ctx context.Context) Sample {
	s := Sample{At: time.Now(), Up: map[string]bool{}, Leaders: map[string]string{}, Voters: map[string]bool{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range m.c.Servers() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			leader, err := leaderOf(cctx, n.API())
			mu.Lock()
			defer mu.Unlock()
			s.Up[n.Name] = err == nil
			if err == nil {
				s.Leaders[n.Name] = leader
			}
		}()
	}
	wg.Wait()
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	q := (&api.QueryOptions{AllowStale: true}).WithContext(cctx)
	if cfg, err := m.writer.Operator().RaftGetConfiguration(q); err == nil {
		for _, srv := range cfg.Servers {
			s.Voters[srv.Node] = srv.Voter
		}
	}
	if pair, _, err := m.writer.KV().Get(m.lockKey, q); err == nil && pair != nil {
		var v struct{ Holders map[string]bool }
		if json.Unmarshal(pair.Value, &v) == nil {
			for h := range v.Holders {
				s.LockHold = append(s.LockHold, h)
			}
			sort.Strings(s.LockHold)
		}
	}
	return s
}

func leaderOf(ctx context.Context, c *api.Client) (string, error) {
	var leader string
	r, err := c.Raw().Query("/v1/status/leader", &leader, (&api.QueryOptions{}).WithContext(ctx))
	_ = r
	return leader, err
}

// Report is what the monitor measured.
type Report struct {
	Samples int
	// MaxServersImpaired is the most servers seen down or non-voting in one sample.
	MaxServersImpaired int
	// LongestLeaderless is the longest stretch in which the answering servers did not agree on one
	// non-empty leader.
	LongestLeaderless time.Duration
	// LeaderAtStop says, for every server that went down, who the agreed leader was just before.
	LeaderAtStop map[string][]string
	// StopOrder lists servers in the order they went down.
	StopOrder []string
	// Downs are the stretches in which a server did not answer.
	Downs []Down
	// Write availability through the unrestarted node.
	Writes, FailedWrites int
	Unavailable          time.Duration // sum of gaps between successful writes longer than 50ms
	// RestartUnavailable is the part of Unavailable in gaps that overlap a server's restart (from 1s
	// before it stopped answering, which covers a leadership transfer, to 1s after it answered again);
	// the rest is load on the shared test machine (staging, other tests), not quorum or leadership.
	RestartUnavailable time.Duration
	LongestGap           time.Duration
	// Gaps are the write gaps longer than 50ms, largest first (at most 8), with when they ended.
	Gaps []Gap
	// LockGaps counts samples taken while a server was down in which the server lock named no holder.
	LockGaps int
}

// Report summarizes everything sampled in [from, to) (zero times: unbounded).
func (m *Monitor) Report(from, to time.Time) Report {
	m.mu.Lock()
	defer m.mu.Unlock()
	in := func(t time.Time) bool { return !t.Before(from) && (to.IsZero() || t.Before(to)) }
	var samples []Sample
	for _, s := range m.samples {
		if in(s.At) {
			samples = append(samples, s)
		}
	}
	var writes []writeResult
	for _, w := range m.writes {
		if in(w.at) {
			writes = append(writes, w)
		}
	}
	r := Report{Samples: len(samples), LeaderAtStop: map[string][]string{}}
	var leaderlessSince time.Time
	lastLeader := ""
	prevUp := map[string]bool{}
	downSince := map[string]time.Time{}
	for i, s := range samples {
		impaired := 0
		anyDown := false
		for name, up := range s.Up {
			voter, known := s.Voters[name]
			if !up || (known && !voter) {
				impaired++
			}
			if !up {
				anyDown = true
				if i > 0 && prevUp[name] {
					r.StopOrder = append(r.StopOrder, name)
					r.LeaderAtStop[name] = append(r.LeaderAtStop[name], lastLeader)
					downSince[name] = s.At
				}
			} else if !downSince[name].IsZero() {
				r.Downs = append(r.Downs, Down{Node: name, From: downSince[name], To: s.At})
				downSince[name] = time.Time{}
			}
		}
		r.MaxServersImpaired = max(r.MaxServersImpaired, impaired)
		if anyDown && len(s.LockHold) == 0 {
			r.LockGaps++
		}
		if leader, ok := agreed(s); ok {
			lastLeader = m.nodeOfLeader(leader)
			if !leaderlessSince.IsZero() {
				r.LongestLeaderless = max(r.LongestLeaderless, s.At.Sub(leaderlessSince))
				leaderlessSince = time.Time{}
			}
		} else if leaderlessSince.IsZero() {
			leaderlessSince = s.At
		}
		prevUp = s.Up
	}
	var last time.Time
	for _, w := range writes {
		r.Writes++
		if !w.ok {
			r.FailedWrites++
			continue
		}
		if !last.IsZero() {
			gap := w.at.Sub(last)
			if gap > 50*time.Millisecond {
				r.Unavailable += gap
				r.Gaps = append(r.Gaps, Gap{End: w.at, Length: gap})
				if overlapsRestart(r.Downs, last, w.at) {
					r.RestartUnavailable += gap
				}
			}
			r.LongestGap = max(r.LongestGap, gap)
		}
		last = w.at
	}
	sort.Slice(r.Gaps, func(i, j int) bool { return r.Gaps[i].Length > r.Gaps[j].Length })
	if len(r.Gaps) > 8 {
		r.Gaps = r.Gaps[:8]
	}
	return r
}

func overlapsRestart(downs []Down, from, to time.Time) bool {
	for _, d := range downs {
		if from.Before(d.To.Add(time.Second)) && to.After(d.From.Add(-time.Second)) {
			return true
		}
	}
	return false
}

// Down is one stretch in which a server did not answer.
type Down struct {
	Node     string
	From, To time.Time
}

func (d Down) String() string {
	return fmt.Sprintf("%s %s-%s", d.Node, d.From.Format("15:04:05.000"), d.To.Format("15:04:05.000"))
}

// Gap is one stretch without a successful write.
type Gap struct {
	End    time.Time
	Length time.Duration
}

func (g Gap) String() string {
	return fmt.Sprintf("%s@%s", g.Length.Round(time.Millisecond), g.End.Format("15:04:05.000"))
}

// agreed reports the leader every answering server names, if they all name the same non-empty one.
func agreed(s Sample) (string, bool) {
	leader := ""
	for name, up := range s.Up {
		if !up {
			continue
		}
		l := s.Leaders[name]
		if l == "" || (leader != "" && l != leader) {
			return "", false
		}
		leader = l
	}
	return leader, leader != ""
}

// nodeOfLeader maps a raft address ("127.0.N.x:8300") to a node name.
func (m *Monitor) nodeOfLeader(addr string) string {
	for _, n := range m.c.Servers() {
		if n.RPCAddr == addr {
			return n.Name
		}
	}
	return addr
}

func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "samples=%d max_servers_impaired=%d longest_leaderless=%s stop_order=%v leader_at_stop=%v lock_gaps=%d downs=%v\n",
		r.Samples, r.MaxServersImpaired, r.LongestLeaderless.Round(time.Millisecond), r.StopOrder, r.LeaderAtStop, r.LockGaps, r.Downs)
	fmt.Fprintf(&b, "writes=%d failed_writes=%d write_unavailability=%s (around server restarts: %s) longest_gap=%s largest_gaps=%v",
		r.Writes, r.FailedWrites, r.Unavailable.Round(time.Millisecond), r.RestartUnavailable.Round(time.Millisecond), r.LongestGap.Round(time.Millisecond), r.Gaps)
	return b.String()
}
