package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/upgrader-dev/upgrader/internal/config"
	"github.com/upgrader-dev/upgrader/internal/consulconn"
	"github.com/upgrader-dev/upgrader/internal/permission"
)

// consulConfig is how every client of the agent reaches Consul: address, scheme, token file and TLS
// from the configuration, on top of the CONSUL_* environment.
func consulConfig(cfg *config.Config, logger hclog.Logger) consulconn.Config {
	return consulconn.Config{
		Address:   cfg.Consul.Address,
		Scheme:    cfg.Consul.Scheme,
		TokenFile: cfg.Consul.TokenFile,
		TLS: consulconn.TLS{CAFile: cfg.Consul.CAFile, CertFile: cfg.Consul.CertFile, KeyFile: cfg.Consul.KeyFile,
			ServerName: cfg.Consul.TLSServerName},
		Logger: logger,
	}
}

// checkPermissions runs the pre-flight ACL check (FAULTS F5) through the local agent. A missing rule, or
// a token Consul still does not know at the deadline, refuses the start; a Consul that cannot answer in
// time (no leader) is only a warning, so that an upgrader restarted in the middle of an upgrade still
// resumes its journal.
func checkPermissions(ctx context.Context, cfg *config.Config, connCfg consulconn.Config, local *consulconn.Conn,
	node string, server bool, logger hclog.Logger) error {
	port := portOf(local.Address())
	var transports []*http.Transport
	defer func() {
		for _, t := range transports {
			t.CloseIdleConnections()
		}
	}()
	needs := permission.Needs{KVPrefix: cfg.KVPrefix, Product: cfg.Product, Node: node, Server: server,
		DialPeer: func(host string) (*api.Client, error) {
			ac, err := connCfg.APIConfig()
			if err != nil {
				return nil, err
			}
			ac.Address = net.JoinHostPort(host, port)
			transports = append(transports, ac.Transport)
			return api.NewClient(ac)
		}}
	_, err := permission.Check(ctx, local.API(), needs, permission.Options{Logger: logger})
	var denied *permission.DeniedError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &denied):
		logger.Error("refusing to start: the Consul token lacks a permission the upgrader needs; nothing was changed",
			"missing_rule", denied.Rule, "refused_call", denied.Method+" "+denied.Path, "policy", "jobs/acl/upgrader-agent.hcl")
		return err
	case errors.Is(err, permission.ErrTokenUnknown):
		logger.Error("refusing to start: Consul does not know the token in consul.token_file (or CONSUL_HTTP_TOKEN)", "error", err)
		return err
	case errors.Is(err, permission.ErrUnavailable) && ctx.Err() == nil:
		logger.Warn("could not verify the token's permissions: Consul did not answer in time; starting anyway "+
			"(a missing permission will fail the step that needs it)", "error", err)
		return nil
	}
	return err
}

// readTokenFile reads a token file. Errors name the file, never its content.
func readTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("failed to read consul.snapshot_token_file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("failed to read consul.snapshot_token_file %s: it is empty", path)
	}
	return token, nil
}

// portOf is the port of a "host:port" address, or "" (then the health observer falls back to the agent's
// own report).
func portOf(addr string) string {
	if _, p, err := net.SplitHostPort(addr); err == nil {
		return p
	}
	return ""
}
