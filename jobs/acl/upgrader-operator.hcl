# ACL policy for the operator side: `upgrader rollout start|status|pause|resume|halt` (and
# `consul kv put upgrader/consul/target ...`). It reads and writes the upgrader's KV schema and
# nothing else. Create it with:
#   consul acl policy create -name upgrader-operator -rules @jobs/acl/upgrader-operator.hcl
#   consul acl token create -description "upgrader operator" -policy-name upgrader-operator
# For a read-only token (`rollout status` only) use policy = "read".
key_prefix "upgrader/" {
  policy = "write"
}
