package permission

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// Defaults of Options.
const (
	// DefaultTimeout bounds the whole check. It covers a cluster that is still electing its first leader
	// and an operator who creates the token a little after the agent started, and ends a wait that would
	// otherwise hide a typo in consul.token_file forever.
	DefaultTimeout = 2 * time.Minute
	// DefaultCallTimeout bounds one HTTP call.
	DefaultCallTimeout = 10 * time.Second
	// DefaultMinBackoff and DefaultMaxBackoff bound the wait between retries of a transient answer.
	DefaultMinBackoff = 250 * time.Millisecond
	DefaultMaxBackoff = 5 * time.Second
	// probeSessionTTL is the TTL of the throwaway session: destroyed at once, it expires by itself even
	// if the destroy never arrives.
	probeSessionTTL = "10s"
	// probeMetaKey marks the anchor node while the check writes it.
	probeMetaKey = "upgrader-permission-check"
)

// Needs says what the agent on this node will do, and so what the token must allow.
type Needs struct {
	// KVPrefix ("upgrader/") and Product ("consul"): the probe key is <KVPrefix><Product>/probe/<Node>.
	KVPrefix, Product string
	// Node is this node's name.
	Node string
	// Anchor is the lock's catalog node; empty: AnchorNode(Node).
	Anchor string
	// Server: this node is a server, so it also transfers leadership (operator write) and reads the other
	// servers' /v1/agent/self.
	Server bool
	// DialPeer returns a client for another server's HTTP API on host (its IP from the raft
	// configuration), with the same token and TLS settings. Nil: other servers are not asked.
	DialPeer func(host string) (*api.Client, error)
}

func (n Needs) validate() error {
	if n.KVPrefix == "" || n.Product == "" || n.Node == "" {
		return fmt.Errorf("%w: KVPrefix, Product and Node are required (got %q, %q, %q)", ErrNeeds, n.KVPrefix, n.Product, n.Node)
	}
	return nil
}

// Options tune the check. Zero values take the defaults.
type Options struct {
	Timeout, CallTimeout   time.Duration
	MinBackoff, MaxBackoff time.Duration
	Logger                 hclog.Logger
	// Now is the clock for Report.Took; nil: time.Now.
	Now func() time.Time
}

func (o *Options) finalize() {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = DefaultCallTimeout
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(DefaultMaxBackoff, o.MinBackoff)
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Report says what a successful check exercised.
type Report struct {
	// Rules are the rules proven, in the order checked.
	Rules []string
	// Calls counts HTTP calls (retries included); Retries the transient answers retried; PeersAsked the
	// other servers whose /v1/agent/self answered.
	Calls, Retries, PeersAsked int
	Took                       time.Duration
}

type checker struct {
	c      *api.Client
	n      Needs
	o      Options
	log    hclog.Logger
	report Report
}

// Check exercises every permission the agent needs, through c (which carries the token), and returns
// the first missing rule as a *DeniedError (errors.Is ErrDenied). Read-only calls come first, so a token
// that lacks a read rule is refused before anything is written. The writes leave nothing behind: the
// probe key is deleted, the throwaway session destroyed, and the anchor node restored as it was (or
// removed if the check created it and no session uses it).
//
// Transient answers are retried with backoff until ctx or Options.Timeout ends; then the error wraps
// ErrUnavailable and says what Consul last answered.
func Check(ctx context.Context, c *api.Client, n Needs, o Options) (Report, error) {
	o.finalize()
	if err := n.validate(); err != nil {
		return Report{}, err
	}
	if n.Anchor == "" {
		n.Anchor = AnchorNode(n.Node)
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	k := &checker{c: c, n: n, o: o, log: o.Logger.Named("permission")}
	start := o.Now()
	steps := []struct {
		rule string
		run  func(context.Context, string) error
		when bool
	}{ // read-only first
		{RuleAgentRead, k.agentRead, true},
		{RuleNodeRead, k.nodeRead, true},
		{RuleOperatorRead, k.operatorRead, true},
		{RuleServiceConsulRead, k.serviceRead, true},
		{RuleAgentRead, k.peerAgentRead, n.Server && n.DialPeer != nil},
		{RuleKeyWrite(n.KVPrefix), k.keyWrite, true},
		{RuleAnchorNodeWrite, k.anchorAndSession, true}, // and RuleAnchorSessionWrite
		{RuleOperatorWrite, k.operatorWrite, n.Server},
	}
	for _, s := range steps {
		if !s.when {
			continue
		}
		if err := s.run(ctx, s.rule); err != nil {
			k.report.Took = o.Now().Sub(start)
			return k.report, err
		}
		k.report.Rules = append(k.report.Rules, s.rule)
		if s.rule == RuleAnchorNodeWrite {
			k.report.Rules = append(k.report.Rules, RuleAnchorSessionWrite)
		}
	}
	k.report.Took = o.Now().Sub(start)
	k.log.Info("the token has every permission the agent needs", "rules", len(k.report.Rules),
		"calls", k.report.Calls, "retries", k.report.Retries, "took", k.report.Took.Round(time.Millisecond))
	return k.report, nil
}

func qo(ctx context.Context) *api.QueryOptions { return (&api.QueryOptions{}).WithContext(ctx) }
func wo(ctx context.Context) *api.WriteOptions { return (&api.WriteOptions{}).WithContext(ctx) }

func (k *checker) agentRead(ctx context.Context, rule string) error {
	return k.call(ctx, rule, http.MethodGet, "/v1/agent/self", func(ctx context.Context) error {
		var self map[string]any
		_, err := k.c.Raw().Query("/v1/agent/self", &self, qo(ctx))
		return err
	})
}

// nodeRead: /v1/agent/members answers 200 either way; without node read it hides the members.
func (k *checker) nodeRead(ctx context.Context, rule string) error {
	var members []*api.AgentMember
	var meta *api.QueryMeta
	err := k.call(ctx, rule, http.MethodGet, "/v1/agent/members", func(ctx context.Context) error {
		var err error
		meta, err = k.c.Raw().Query("/v1/agent/members", &members, qo(ctx))
		return err
	})
	if err != nil {
		return err
	}
	self := false
	for _, m := range members {
		self = self || m.Name == k.n.Node
	}
	if meta.ResultsFilteredByACLs || !self {
		return &DeniedError{Rule: rule, Method: http.MethodGet, Path: "/v1/agent/members", Status: http.StatusOK,
			Detail: fmt.Sprintf("%d members visible, this node %s among them: %t", len(members), k.n.Node, self)}
	}
	return nil
}

func (k *checker) operatorRead(ctx context.Context, rule string) error {
	err := k.call(ctx, rule, http.MethodGet, "/v1/operator/raft/configuration", func(ctx context.Context) error {
		_, err := k.c.Operator().RaftGetConfiguration(qo(ctx))
		return err
	})
	if err != nil {
		return err
	}
	return k.call(ctx, rule, http.MethodGet, "/v1/operator/autopilot/health", func(ctx context.Context) error {
		_, err := k.c.Operator().AutopilotServerHealth(qo(ctx))
		return err
	})
}

func (k *checker) serviceRead(ctx context.Context, rule string) error {
	var meta *api.QueryMeta
	var n int
	err := k.call(ctx, rule, http.MethodGet, "/v1/catalog/service/consul", func(ctx context.Context) error {
		svcs, m, err := k.c.Catalog().Service("consul", "", qo(ctx))
		meta, n = m, len(svcs)
		return err
	})
	if err != nil {
		return err
	}
	if meta.ResultsFilteredByACLs {
		return &DeniedError{Rule: rule, Method: http.MethodGet, Path: "/v1/catalog/service/consul", Status: http.StatusOK,
			Detail: fmt.Sprintf("%d servers visible", n)}
	}
	return nil
}

// peerAgentRead asks every other server in the raft configuration for /v1/agent/self: the confirm gate
// does, and Consul checks agent read against the answering agent's own node name. A server that cannot
// be reached is skipped (it says nothing about the token); a 403 is final.
func (k *checker) peerAgentRead(ctx context.Context, rule string) error {
	var cfg *api.RaftConfiguration
	err := k.call(ctx, RuleOperatorRead, http.MethodGet, "/v1/operator/raft/configuration", func(ctx context.Context) error {
		var err error
		cfg, err = k.c.Operator().RaftGetConfiguration(qo(ctx))
		return err
	})
	if err != nil {
		return err
	}
	for _, s := range cfg.Servers {
		if s.Node == k.n.Node {
			continue
		}
		host, _, err := net.SplitHostPort(s.Address)
		if err != nil {
			continue
		}
		peer, err := k.n.DialPeer(host)
		if err != nil {
			return fmt.Errorf("failed to make a client for server %s: %w", s.Node, err)
		}
		cctx, cancel := context.WithTimeout(ctx, k.o.CallTimeout)
		var self map[string]any
		_, err = peer.Raw().Query("/v1/agent/self", &self, qo(cctx))
		cancel()
		k.report.Calls++
		switch classify(err) {
		case allowed:
			k.report.PeersAsked++
		case denied:
			return &DeniedError{Rule: rule, Method: http.MethodGet, Path: "/v1/agent/self", Status: http.StatusForbidden,
				Detail: fmt.Sprintf("asked server %s: %s", s.Node, statusDetail(err))}
		default:
			k.log.Debug("server not asked for /v1/agent/self", "server", s.Node, "error", err)
		}
	}
	return nil
}

// keyWrite writes and deletes the confirm gate's probe key (the same key the gate writes later).
func (k *checker) keyWrite(ctx context.Context, rule string) error {
	key := k.n.KVPrefix + k.n.Product + "/probe/" + k.n.Node
	path := "/v1/kv/" + key
	err := k.call(ctx, rule, http.MethodPut, path, func(ctx context.Context) error {
		_, err := k.c.KV().Put(&api.KVPair{Key: key, Value: []byte("permission check")}, wo(ctx))
		return err
	})
	if err != nil {
		return err
	}
	return k.call(ctx, rule, http.MethodDelete, path, func(ctx context.Context) error {
		_, err := k.c.KV().Delete(key, wo(ctx))
		return err
	})
}

// operatorWrite sends the autopilot configuration back with a check-and-set index no configuration can
// have: Consul checks operator write first, then answers false and changes nothing.
func (k *checker) operatorWrite(ctx context.Context, rule string) error {
	var conf *api.AutopilotConfiguration
	err := k.call(ctx, RuleOperatorRead, http.MethodGet, "/v1/operator/autopilot/configuration", func(ctx context.Context) error {
		var err error
		conf, err = k.c.Operator().AutopilotGetConfiguration(qo(ctx))
		return err
	})
	if err != nil {
		return err
	}
	probe := *conf
	probe.ModifyIndex = math.MaxUint64
	return k.call(ctx, rule, http.MethodPut, fmt.Sprintf("/v1/operator/autopilot/configuration?cas=%d", probe.ModifyIndex),
		func(ctx context.Context) error {
			changed, err := k.c.Operator().AutopilotCASConfiguration(&probe, wo(ctx))
			if err == nil && changed {
				k.log.Warn("autopilot configuration check-and-set with an impossible index succeeded")
			}
			return err
		})
}
