package permission

import "fmt"

// SnapshotError explains a failed /v1/snapshot. Consul allows it only to a token with acl write (in
// practice a management token), which the agent's least-privilege policy deliberately lacks; on a 403 the
// error says which token to configure. Any other error is returned as is.
func SnapshotError(err error, snapshotTokenConfigured bool) error {
	if classify(err) != denied {
		return err
	}
	if snapshotTokenConfigured {
		return fmt.Errorf("%w: the token in consul.snapshot_token_file lacks %q, which /v1/snapshot needs "+
			"(in practice a management token): %w", ErrDenied, RuleSnapshot, err)
	}
	return fmt.Errorf("%w: the agent's token lacks %q, which /v1/snapshot needs and "+
		"jobs/acl/upgrader-agent.hcl deliberately leaves out: set consul.snapshot_token_file to a file holding "+
		"a management token: %w", ErrDenied, RuleSnapshot, err)
}
