package fleet

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Report is what the monitor measured over one time range.
type Report struct {
	Probes, Samples int
	// MaxServersImpaired is the most servers down or non-voting at the same moment.
	MaxServersImpaired int
	// LongestLeaderless is the longest stretch in which the answering servers did not agree on one
	// non-empty leader.
	LongestLeaderless time.Duration
	// Downs are the stretches in which a node did not answer its local endpoint, servers and clients.
	Downs []Down
	// StopOrder lists the servers in the order they went down; LeaderAtStop says who the agreed leader
	// was just before each went down.
	StopOrder    []string
	LeaderAtStop map[string][]string
	// LockGaps counts samples taken while a server was down in which the server lock was read and named
	// no holder; ClientLockGaps the same for clients and the client lock. ClientDowns counts client
	// restarts seen.
	LockGaps, ClientLockGaps, ClientDowns int
	// Write availability through the unrestarted node.
	Writes, FailedWrites int
	Unavailable          time.Duration // sum of gaps between successful writes longer than 50ms
	// RestartUnavailable is the part of Unavailable in gaps that overlap a server's restart (from 1s
	// before it stopped answering, which covers a leadership transfer, to 1s after it answered again);
	// the rest is load on the shared test machine (staging, other tests), not quorum or leadership.
	RestartUnavailable time.Duration
	LongestGap         time.Duration
	Gaps               []Gap // the largest gaps (at most 8), largest first
}

// Down is one stretch in which a node did not answer.
type Down struct {
	Node     string
	Server   bool
	From, To time.Time // first failing probe, first answering probe after it (zero: still down)
}

func (d Down) covers(t time.Time) bool {
	return !t.Before(d.From) && (d.To.IsZero() || t.Before(d.To))
}

func (d Down) String() string {
	to := "..."
	if !d.To.IsZero() {
		to = d.To.Format("15:04:05.000")
	}
	return fmt.Sprintf("%s %s-%s", d.Node, d.From.Format("15:04:05.000"), to)
}

// Gap is one stretch without a successful write.
type Gap struct {
	End    time.Time
	Length time.Duration
}

func (g Gap) String() string {
	return fmt.Sprintf("%s@%s", g.Length.Round(time.Millisecond), g.End.Format("15:04:05.000"))
}

type agreement struct {
	at     time.Time
	leader string // "" = no agreement from here on
}

// Report summarizes everything measured in [from, to) (a zero to: up to now).
func (m *Monitor) Report(from, to time.Time) Report {
	m.mu.Lock()
	defer m.mu.Unlock()
	in := func(t time.Time) bool { return !t.Before(from) && (to.IsZero() || t.Before(to)) }
	r := Report{LeaderAtStop: map[string][]string{}}
	servers := map[string]bool{}
	for _, n := range m.c.Servers() {
		servers[n.Name] = true
	}

	// Downs, per node, from its own probe timeline.
	type event struct {
		node string
		p    probe
	}
	var merged []event
	for node, ps := range m.probes {
		var cur *Down
		for _, p := range ps {
			if !in(p.at) {
				continue
			}
			r.Probes++
			if servers[node] {
				merged = append(merged, event{node, p})
			}
			switch {
			case !p.up && cur == nil:
				cur = &Down{Node: node, Server: servers[node], From: p.at}
			case p.up && cur != nil:
				cur.To = p.at
				r.Downs = append(r.Downs, *cur)
				cur = nil
			}
		}
		if cur != nil {
			r.Downs = append(r.Downs, *cur)
		}
	}
	sort.Slice(r.Downs, func(i, j int) bool { return r.Downs[i].From.Before(r.Downs[j].From) })

	// Leader agreement over time, from every server's latest probe.
	sort.Slice(merged, func(i, j int) bool { return merged[i].p.at.Before(merged[j].p.at) })
	latest := map[string]probe{}
	var timeline []agreement
	var leaderlessSince time.Time
	for _, e := range merged {
		latest[e.node] = e.p
		leader, ok := agreedLeader(latest)
		if ok {
			if len(timeline) == 0 || timeline[len(timeline)-1].leader != leader {
				timeline = append(timeline, agreement{e.p.at, leader})
			}
			if !leaderlessSince.IsZero() {
				r.LongestLeaderless = max(r.LongestLeaderless, e.p.at.Sub(leaderlessSince))
				leaderlessSince = time.Time{}
			}
		} else if leaderlessSince.IsZero() {
			leaderlessSince = e.p.at
			timeline = append(timeline, agreement{e.p.at, ""})
		}
	}
	for _, d := range r.Downs {
		if !d.Server {
			r.ClientDowns++
			continue
		}
		r.StopOrder = append(r.StopOrder, d.Node)
		r.LeaderAtStop[d.Node] = append(r.LeaderAtStop[d.Node], m.nodeOfLeader(lastAgreedBefore(timeline, d.From)))
	}

	// Impaired servers: down at the same moment, or non-voting in a sample.
	impairedAt := func(t time.Time, voters map[string]bool) int {
		bad := map[string]bool{}
		for _, d := range r.Downs {
			if d.Server && d.covers(t) {
				bad[d.Node] = true
			}
		}
		for node, voter := range voters {
			if servers[node] && !voter {
				bad[node] = true
			}
		}
		return len(bad)
	}
	for _, d := range r.Downs {
		r.MaxServersImpaired = max(r.MaxServersImpaired, impairedAt(d.From, nil))
	}
	for _, s := range m.samples {
		if !in(s.At) {
			continue
		}
		r.Samples++
		r.MaxServersImpaired = max(r.MaxServersImpaired, impairedAt(s.At, s.Voters))
		serverDown, clientDown := false, false
		for _, d := range r.Downs {
			if d.covers(s.At) {
				serverDown = serverDown || d.Server
				clientDown = clientDown || !d.Server
			}
		}
		if serverDown && s.LockKnown && len(s.LockHold) == 0 {
			r.LockGaps++
		}
		if clientDown && s.ClientLockKnown && len(s.ClientLockHold) == 0 {
			r.ClientLockGaps++
		}
	}

	// Writes.
	var last time.Time
	for _, w := range m.writes {
		if !in(w.at) {
			continue
		}
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
				if overlapsServerDown(r.Downs, last, w.at) {
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

// agreedLeader reports the leader every answering server names, if they all name the same one.
func agreedLeader(latest map[string]probe) (string, bool) {
	leader := ""
	for _, p := range latest {
		if !p.up {
			continue
		}
		if p.leader == "" || (leader != "" && p.leader != leader) {
			return "", false
		}
		leader = p.leader
	}
	return leader, leader != ""
}

func lastAgreedBefore(timeline []agreement, t time.Time) string {
	leader := ""
	for _, a := range timeline {
		if !a.at.Before(t) {
			break
		}
		if a.leader != "" {
			leader = a.leader
		}
	}
	return leader
}

func overlapsServerDown(downs []Down, from, to time.Time) bool {
	for _, d := range downs {
		end := d.To
		if end.IsZero() {
			end = to
		}
		if d.Server && from.Before(end.Add(time.Second)) && to.After(d.From.Add(-time.Second)) {
			return true
		}
	}
	return false
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
	fmt.Fprintf(&b, "probes=%d samples=%d max_servers_impaired=%d longest_leaderless=%s stop_order=%v leader_at_stop=%v lock_gaps=%d client_downs=%d client_lock_gaps=%d\n",
		r.Probes, r.Samples, r.MaxServersImpaired, r.LongestLeaderless.Round(time.Millisecond), r.StopOrder, r.LeaderAtStop, r.LockGaps, r.ClientDowns, r.ClientLockGaps)
	fmt.Fprintf(&b, "downs=%v\n", r.Downs)
	fmt.Fprintf(&b, "writes=%d failed_writes=%d write_unavailability=%s (around server restarts: %s) longest_gap=%s largest_gaps=%v",
		r.Writes, r.FailedWrites, r.Unavailable.Round(time.Millisecond), r.RestartUnavailable.Round(time.Millisecond), r.LongestGap.Round(time.Millisecond), r.Gaps)
	return b.String()
}
