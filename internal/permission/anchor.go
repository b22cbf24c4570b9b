package permission

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"time"

	"github.com/hashicorp/consul/api"
)

// defaultAnchorAddress is the anchor's address when the check registers it (the lock re-registers it
// with its own when it takes the lock).
const defaultAnchorAddress = "127.0.0.1"

// anchorAndSession exercises what the lock does on the anchor node: register it (node write; a change
// to an existing node is made so that Consul checks the rule), create and destroy a session on it
// (session write), then put the node back as it was, or deregister it if the check created it and no
// session uses it. A session the lock journaled on an existing anchor is never touched.
func (k *checker) anchorAndSession(ctx context.Context, _ string) error {
	anchor := k.n.Anchor
	var before *api.CatalogNode
	err := k.call(ctx, RuleNodeRead, http.MethodGet, "/v1/catalog/node/"+anchor, func(ctx context.Context) error {
		var err error
		before, _, err = k.c.Catalog().Node(anchor, qo(ctx))
		return err
	})
	if err != nil {
		return err
	}
	reg := &api.CatalogRegistration{Node: anchor, Address: defaultAnchorAddress,
		NodeMeta: map[string]string{"upgrader-anchor": "true", "upgrader-holder": k.n.Node}}
	if before != nil && before.Node != nil {
		reg.Address, reg.TaggedAddresses = before.Node.Address, before.Node.TaggedAddresses
		reg.NodeMeta = maps.Clone(before.Node.Meta)
		delete(reg.NodeMeta, probeMetaKey) // left by a check that crashed
	}
	restore := *reg
	probe := *reg
	probe.NodeMeta = maps.Clone(reg.NodeMeta)
	if probe.NodeMeta == nil {
		probe.NodeMeta = map[string]string{}
	}
	probe.NodeMeta[probeMetaKey] = k.o.Now().UTC().Format(time.RFC3339Nano)

	err = k.call(ctx, RuleAnchorNodeWrite, http.MethodPut, "/v1/catalog/register", func(ctx context.Context) error {
		_, err := k.c.Catalog().Register(&probe, wo(ctx))
		return err
	})
	if err != nil {
		return err
	}
	sessErr := k.session(ctx, anchor)
	// Put the anchor back even when the session was refused or the context ended.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), k.o.CallTimeout*2)
	defer cancel()
	var cleanErr error
	if before != nil && before.Node != nil {
		cleanErr = k.call(cctx, RuleAnchorNodeWrite, http.MethodPut, "/v1/catalog/register", func(ctx context.Context) error {
			_, err := k.c.Catalog().Register(&restore, wo(ctx))
			return err
		})
	} else {
		cleanErr = k.deregisterIfUnused(cctx, anchor)
	}
	if sessErr != nil {
		return sessErr
	}
	return cleanErr
}

func (k *checker) session(ctx context.Context, anchor string) error {
	var id string
	err := k.call(ctx, RuleAnchorSessionWrite, http.MethodPut, "/v1/session/create", func(ctx context.Context) error {
		var err error
		id, _, err = k.c.Session().CreateNoChecks(&api.SessionEntry{
			Name: "upgrader-permission-check", Node: anchor, TTL: probeSessionTTL, Behavior: api.SessionBehaviorDelete,
		}, wo(ctx))
		return err
	})
	if err != nil {
		return err
	}
	return k.call(ctx, RuleAnchorSessionWrite, http.MethodPut, "/v1/session/destroy/"+id, func(ctx context.Context) error {
		_, err := k.c.Session().Destroy(id, wo(ctx))
		return err
	})
}

func (k *checker) deregisterIfUnused(ctx context.Context, anchor string) error {
	var sessions []*api.SessionEntry
	err := k.call(ctx, RuleAnchorSessionWrite, http.MethodGet, "/v1/session/node/"+anchor, func(ctx context.Context) error {
		var err error
		sessions, _, err = k.c.Session().Node(anchor, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
		return err
	})
	if err != nil {
		return err
	}
	if len(sessions) > 0 {
		k.log.Debug("anchor node carries sessions; leaving it registered", "node", anchor, "sessions", len(sessions))
		return nil
	}
	err = k.call(ctx, RuleAnchorNodeWrite, http.MethodPut, "/v1/catalog/deregister", func(ctx context.Context) error {
		_, err := k.c.Catalog().Deregister(&api.CatalogDeregistration{Node: anchor}, wo(ctx))
		return err
	})
	if err != nil {
		return fmt.Errorf("failed to remove the anchor node the check registered: %w", err)
	}
	return nil
}
