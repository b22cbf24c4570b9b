// Package rollout owns the upgrader's shared state in Consul KV: the desired target version and its
// policy, the pause/halt control, each node's status record, the current rollout record with per-node
// outcomes, and the history of finished rollouts. It parses and validates what operators write, reads
// and writes those keys safely (blocking queries that survive index resets, check-and-set on every
// read-modify-write), and renders the status table operators read.
//
// Layout under a configurable prefix (default "upgrader/") for a product (e.g. "consul"):
//
//	<prefix><product>/target          desired version: a bare version or a JSON object (see ParseTarget)
//	<prefix><product>/control         running | paused | halted, with reason (missing key = running)
//	<prefix><product>/nodes/<node>    one NodeStatus per node, written only by that node
//	<prefix><product>/rollout         the current Rollout record
//	<prefix><product>/history/<id>    finished Rollout records
//	<prefix><product>/lock/servers/   semaphore prefix for servers (limit 1), see ServerLockPrefix
//	<prefix><product>/lock/clients/   semaphore prefix for clients (limit N), see ClientLockPrefix
//
// Deciding who goes next and running the per-node state machine belong to other packages; this one only
// stores and reports.
package rollout
