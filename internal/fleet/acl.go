package fleet

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/consul/api"
)

// ShippedAgentPolicy is the repository's least-privilege policy for `upgrader agent`.
const ShippedAgentPolicy = "jobs/acl/upgrader-agent.hcl"

// aclAgentConfig makes every agent enforce ACLs in default-deny mode; the agents themselves use the
// management token, which the harness uses too.
func aclAgentConfig(management string) string {
	return fmt.Sprintf(`acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true
  tokens {
    initial_management = %q
    agent              = %q
  }
}`, management, management)
}

// newSecret returns a random UUID-shaped ACL secret.
func newSecret() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:]), nil
}

// ReadShippedPolicy reads jobs/acl/upgrader-agent.hcl from the module root.
func ReadShippedPolicy() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(root, ShippedAgentPolicy))
	if err != nil {
		return "", fmt.Errorf("fleet: failed to read the shipped policy: %w", err)
	}
	return string(b), nil
}

// tokenFile is where a node's upgrader reads its token (consul { token_file }).
func (u *Upgrader) tokenFile() string { return filepath.Join(u.Node.Dir, "upgrader.token") }

// SetUpgraderToken writes the token a node's upgrader reads at its next start.
func (f *Fleet) SetUpgraderToken(name, secret string) error {
	u := f.Upgrader(name)
	if u == nil {
		return fmt.Errorf("fleet: no node %q", name)
	}
	return os.WriteFile(u.tokenFile(), []byte(secret+"\n"), 0o600)
}

// CreateToken creates a policy named name with rules and a token of that policy, with the management
// token, and returns the token's secret. A secret may be given (a token the upgraders already read).
func (f *Fleet) CreateToken(ctx context.Context, name, rules, secret string) (string, error) {
	if f.ManagementToken == "" {
		return "", fmt.Errorf("fleet: ACLs are not enabled")
	}
	if secret == "" {
		var err error
		if secret, err = newSecret(); err != nil {
			return "", err
		}
	}
	acl := f.Cluster.Servers()[0].API().ACL()
	wo := (&api.WriteOptions{}).WithContext(ctx)
	if _, _, err := acl.PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, wo); err != nil {
		return "", fmt.Errorf("fleet: failed to create policy %s: %w", name, err)
	}
	if _, _, err := acl.TokenCreate(&api.ACLToken{SecretID: secret, Description: "fleet " + name,
		Policies: []*api.ACLTokenPolicyLink{{Name: name}}}, wo); err != nil {
		return "", fmt.Errorf("fleet: failed to create the %s token: %w", name, err)
	}
	return secret, nil
}

// writeManagementTokenFile writes the management token where servers' upgraders read their snapshot
// token (consul { snapshot_token_file }).
func (f *Fleet) writeManagementTokenFile() (string, error) {
	p := filepath.Join(f.dir, "management.token")
	return p, os.WriteFile(p, []byte(f.ManagementToken+"\n"), 0o600)
}
