# Least-privilege ACL policy for `upgrader agent` (Consul 1.16, default_policy = "deny").
# Every rule below is exercised by the agent's start-up permission check (internal/permission), which
# refuses to start and names the rule when one is missing. Create it with:
#   consul acl policy create -name upgrader-agent -rules @jobs/acl/upgrader-agent.hcl
#   consul acl token create -description "upgrader agent" -policy-name upgrader-agent
# It assumes kv_prefix = "upgrader/"; change the key_prefix rule if you changed the prefix.

# The KV schema: target, control, per-node status, rollout record and history, the semaphores
# (lock/servers/, lock/clients/) and the confirm gate's consistent write (probe/<node>).
key_prefix "upgrader/" {
  policy = "write"
}

# The lock's session lives on an agent-less catalog node "upgrader-anchor-<node>" (internal/lock):
# registering and deregistering that node needs node write on it, creating, renewing and destroying
# the session needs session write on it. Nothing else is written to the catalog.
node_prefix "upgrader-anchor-" {
  policy = "write"
}
session_prefix "upgrader-anchor-" {
  policy = "write"
}

# /v1/agent/members is filtered by node read: the gates and the fallback discovery need every server
# and client member. /v1/catalog/service/consul (discovery when the local agent does not answer) needs
# the consul service too.
node_prefix "" {
  policy = "read"
}
service "consul" {
  policy = "read"
}

# /v1/agent/self of the local agent (who am I, which version) and, on servers, of every other server
# (the confirm gate compares their raft stats): agent read on each node name.
agent_prefix "" {
  policy = "read"
}

# operator read: /v1/operator/raft/configuration and /v1/operator/autopilot/health (the gates).
# operator write: POST /v1/operator/raft/transfer-leader, which the leader calls before it restarts
# itself (Consul checks operator:write). A token used only on client nodes can say "read" here.
operator = "write"

# Not here on purpose: /v1/snapshot needs acl = "write" (in effect a management token). Give the agent
# a separate token for it with consul { snapshot_token_file = "..." }; without one the pre-upgrade
# snapshot is skipped with a warning naming that setting.
