// Package permission owns the upgrader's pre-flight ACL check: before the agent touches anything it
// exercises, with harmless real calls, every Consul permission it will need (the rules of the shipped
// least-privilege policy, jobs/acl/upgrader-agent.hcl), and when one is missing it fails with an error
// naming that rule and the call Consul refused. A 403 is final; a cluster without a leader, an agent
// that cannot be reached, or a token Consul does not know yet are retried with backoff until the
// deadline. Tokens are never logged: the check never sees them, only the api.Client that carries them.
package permission

import "fmt"

// The rules of jobs/acl/upgrader-agent.hcl, written as they appear there (one line each). A DeniedError
// names one of them. rules_test.go keeps this list and the shipped file in step.
const (
	// RuleAgentRead: /v1/agent/self of the local agent and, on servers, of every other server.
	RuleAgentRead = `agent_prefix "" { policy = "read" }`
	// RuleNodeRead: /v1/agent/members and the catalog are filtered by node read.
	RuleNodeRead = `node_prefix "" { policy = "read" }`
	// RuleServiceConsulRead: /v1/catalog/service/consul, server discovery when the local agent is down.
	RuleServiceConsulRead = `service "consul" { policy = "read" }`
	// RuleOperatorRead: /v1/operator/raft/configuration and /v1/operator/autopilot/health (the gates).
	RuleOperatorRead = `operator = "read"`
	// RuleOperatorWrite: /v1/operator/raft/transfer-leader, called by a server that leads when its turn
	// comes. Servers only.
	RuleOperatorWrite = `operator = "write"`
	// RuleAnchorNodeWrite: registering and deregistering the lock's catalog node "upgrader-anchor-<node>".
	RuleAnchorNodeWrite = `node_prefix "upgrader-anchor-" { policy = "write" }`
	// RuleAnchorSessionWrite: creating, renewing and destroying the lock's session on that node.
	RuleAnchorSessionWrite = `session_prefix "upgrader-anchor-" { policy = "write" }`
)

// RuleKeyWrite is the KV rule for the upgrader's prefix (`key_prefix "upgrader/" { policy = "write" }`).
func RuleKeyWrite(prefix string) string {
	return fmt.Sprintf(`key_prefix %q { policy = "write" }`, prefix)
}

// RuleSnapshot is what Consul demands for /v1/snapshot: acl write, which in practice means a management
// token. It is deliberately not in the agent's policy; see SnapshotError.
const RuleSnapshot = `acl = "write"`

// AnchorNode is the catalog node the lock package ties its session to (internal/lock: "upgrader-anchor-"
// + holder).
func AnchorNode(node string) string { return "upgrader-anchor-" + node }
