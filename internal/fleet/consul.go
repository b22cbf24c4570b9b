package fleet

import (
	"fmt"
	"os"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/upgrader-dev/upgrader/internal/testcluster"
)

// consulBlock is a node's consul { } block: its agent's address and, in ACL and TLS fleets, the token
// files and certificates.
func (f *Fleet) consulBlock(u *Upgrader) (string, error) {
	var b strings.Builder
	b.WriteString("consul {\n")
	if f.PKI != nil {
		c := f.PKI.NodeCerts[u.Node.Name]
		fmt.Fprintf(&b, "  address = %q\n  ca_file = %q\n  cert_file = %q\n  key_file = %q\n",
			"https://"+HTTPSAddr(u.Node), f.PKI.CAFile, c[0], c[1])
	} else {
		fmt.Fprintf(&b, "  address = %q\n", u.Node.HTTPAddr)
	}
	if f.o.ACL {
		if err := os.WriteFile(u.tokenFile(), []byte(f.AgentToken+"\n"), 0o600); err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "  token_file = %q\n", u.tokenFile())
		if f.o.SnapshotToken {
			p, err := f.writeManagementTokenFile()
			if err != nil {
				return "", err
			}
			fmt.Fprintf(&b, "  snapshot_token_file = %q\n", p)
		}
	}
	b.WriteString("}\n")
	return b.String(), nil
}

// clientConfig gives the harness's API clients the management token and the TLS settings.
func (f *Fleet) clientConfig(n *testcluster.Node, cfg *api.Config) {
	if f.ManagementToken != "" {
		cfg.Token = f.ManagementToken
	}
	if f.PKI != nil {
		f.PKI.clientConfig(n, cfg)
	}
}
