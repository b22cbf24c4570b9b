package fleet

import (
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/upgrader-dev/upgrader/internal/rollout"
)

// TestTLS_HTTPSOnly: every agent serves HTTPS only (HTTP port closed, client certificates required),
// with certificates from a test CA whose SANs are the nodes' IPs. The upgraders reach their agent with
// consul { ca_file, cert_file, key_file }, and so do their failover to other servers and the gates'
// per-server clients (verified by IP): a 3-server rollout 1.16.0 -> 1.16.1 succeeds.
func TestTLS_HTTPSOnly(t *testing.T) {
	ctx := e2e(t, 10*time.Minute)
	begin := time.Now()
	f, err := Start(ctx, t, Options{Block: 43, Servers: 3, TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("HTTPS-only fleet up in %s", time.Since(begin).Round(time.Millisecond))

	// The cluster really is HTTPS only: HTTP is closed, and HTTPS without a client certificate or
	// without the CA is refused.
	s1 := f.Cluster.Node("s1")
	if c, err := net.DialTimeout("tcp", s1.HTTPAddr, 2*time.Second); err == nil {
		c.Close()
		t.Errorf("plain HTTP still listens on %s", s1.HTTPAddr)
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Logf("plain HTTP on %s: %v", s1.HTTPAddr, err)
	}
	for name, tc := range map[string]api.TLSConfig{
		"no client certificate": {CAFile: f.PKI.CAFile},
		"no CA":                 {CertFile: f.PKI.Harness[0], KeyFile: f.PKI.Harness[1]},
	} {
		c, err := api.NewClient(&api.Config{Address: HTTPSAddr(s1), Scheme: "https", TLSConfig: tc})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.KV().Get("upgrader/consul/target", nil); err == nil {
			t.Errorf("HTTPS with %s was accepted", name)
		} else {
			t.Logf("HTTPS with %s refused: %v", name, err)
		}
	}

	store, err := f.Store("s1")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := store.SetTarget(ctx, rollout.Target{Version: "1.16.1", SetBy: "TestTLS"}); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitRolledOut(ctx, store, "1.16.1", t.Logf); err != nil {
		t.Fatal(err)
	}
	t.Logf("3-server rollout 1.16.0 -> 1.16.1 over HTTPS only: %s", time.Since(start).Round(time.Millisecond))

	// Each upgrader discovered the other servers' HTTPS addresses as lock fallbacks, and while its own
	// agent restarted, requests were served by those fallbacks over HTTPS.
	served := 0
	for _, n := range f.Managed() {
		out := logSince(f.Upgrader(n.Name), 0)
		served += strings.Count(out, "request served by a fallback agent")
		if !strings.Contains(out, "lock fallbacks discovered") || !strings.Contains(out, ":8501") {
			t.Errorf("upgrader %s did not discover HTTPS fallbacks", n.Name)
		}
		for _, bad := range []string{"certificate signed by unknown authority", "doesn't contain any IP SANs", "tls: bad certificate"} {
			if strings.Contains(out, bad) {
				t.Errorf("upgrader %s met a TLS error: %s", n.Name, bad)
			}
		}
	}
	if served == 0 {
		t.Errorf("no request was served by a fallback agent over HTTPS during the rollout")
	}
	t.Logf("%d requests served by fallback agents over HTTPS while the local agents restarted", served)
	if r, err := currentOrLastRollout(ctx, store); err != nil || r.Snapshot == nil {
		t.Errorf("no pre-upgrade snapshot recorded over HTTPS (%v)", err)
	} else if st, err := os.Stat(r.Snapshot.Path); err != nil {
		t.Errorf("snapshot %s: %v", r.Snapshot.Path, err)
	} else {
		t.Logf("pre-upgrade snapshot over HTTPS: %s (%d bytes)", r.Snapshot.Path, st.Size())
	}
}
