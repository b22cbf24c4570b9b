package permission

import (
	"errors"
	"fmt"
)

// Sentinel errors.
var (
	// ErrDenied: the token lacks a rule the agent needs (a DeniedError says which).
	ErrDenied = errors.New("permission: token denied")
	// ErrUnavailable: Consul could not answer (no leader, unreachable, token not known yet) before the
	// deadline; the permissions are unknown.
	ErrUnavailable = errors.New("permission: consul unavailable")
	// ErrTokenUnknown: Consul kept answering "ACL not found" until the deadline (wrapped together with
	// ErrUnavailable): the token does not exist, or consul.token_file names the wrong one.
	ErrTokenUnknown = errors.New("permission: token not known to consul")
	// ErrNeeds: Needs is incomplete.
	ErrNeeds = errors.New("permission: invalid needs")
)

// DeniedError names the rule the token lacks and the call that proved it.
type DeniedError struct {
	// Rule is the missing policy rule, as written in jobs/acl/upgrader-agent.hcl.
	Rule string
	// Method and Path are the refused call, e.g. "PUT" "/v1/kv/upgrader/consul/probe/s1".
	Method, Path string
	// Status is Consul's HTTP status: 403, or 200 when Consul answered but filtered the result by ACLs.
	Status int
	// Detail is Consul's own message (it names the token by AccessorID, never by secret) or what the
	// filtering hid.
	Detail string
}

var _ error = (*DeniedError)(nil)

func (e *DeniedError) Error() string {
	var s string
	if e.Status == 403 {
		s = fmt.Sprintf("token lacks %q: Consul answered 403 for %s %s", e.Rule, e.Method, e.Path)
	} else {
		s = fmt.Sprintf("token lacks %q: Consul filtered %s %s by ACLs", e.Rule, e.Method, e.Path)
	}
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	return s
}

// Unwrap makes errors.Is(err, ErrDenied) true.
func (e *DeniedError) Unwrap() error { return ErrDenied }
