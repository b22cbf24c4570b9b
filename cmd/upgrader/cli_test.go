package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"

	"github.com/upgrader-dev/upgrader/internal/mirror"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errw bytes.Buffer
	code := NewCLI(&out, &errw).Run(args)
	return code, out.String(), errw.String()
}

func TestCLIUsage(t *testing.T) {
	cases := []struct {
		args    []string
		code    int
		wantOut string
		wantErr string
	}{
		{[]string{"version"}, ExitOK, "upgrader ", ""},
		{[]string{"--version"}, ExitOK, "upgrader ", ""},
		{[]string{"-h"}, ExitOK, "", "agent"},
		{nil, ExitUsage, "", "Commands:"},
		{[]string{"frobnicate"}, ExitUsage, "", `unknown command "frobnicate"`},
		{[]string{"agent"}, ExitUsage, "", "-config"},
		{[]string{"agent", "-config", "/nonexistent.hcl"}, ExitUsage, "", "failed to read /nonexistent.hcl"},
		{[]string{"rollout"}, ExitUsage, "", "start"},
		{[]string{"rollout", "start", "consul"}, ExitUsage, "", "Usage"},
		{[]string{"rollout", "status", "nomad"}, ExitUsage, "", `product "nomad" is not supported`},
		{[]string{"release"}, ExitUsage, "", "fetch"},
		{[]string{"release", "fetch", "consul", "1.16"}, ExitUsage, "", "not a full version"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errw := run(t, tc.args...)
			if code != tc.code || !strings.Contains(out, tc.wantOut) || !strings.Contains(errw, tc.wantErr) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s", code, tc.code, out, errw)
			}
		})
	}
}

func TestAgentConfigMistakeSaysWhatToFix(t *testing.T) {
	p := filepath.Join(t.TempDir(), "upgrader.hcl")
	if err := os.WriteFile(p, []byte("binary { path = \"/usr/local/bin/consul\" }\nrestart { mode = \"exec\" }\nrelease { url = \"http://mirror\" }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errw := run(t, "agent", "-config", p)
	if code != ExitUsage || !strings.Contains(errw, "restart.args is required") || !strings.Contains(errw, "allow_insecure_http") {
		t.Fatalf("exit %d, stderr: %s", code, errw)
	}
}

// TestReleaseFetch runs the agent's verification path against a real signed mirror of a small binary.
func TestReleaseFetch(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "fake-consul")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho Consul v1.16.1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	key, err := mirror.GenerateKey("cli test", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := mirror.GenerateKey("not pinned", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(dir, "key.asc")
	if err := mirror.WritePublicKey(pub, key); err != nil {
		t.Fatal(err)
	}
	otherPub := filepath.Join(dir, "other.asc")
	if err := mirror.WritePublicKey(otherPub, other); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	root := filepath.Join(dir, "mirror")
	srv, err := mirror.Serve(ctx, "127.0.0.1:0", root)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := mirror.Build(root, srv.URL(), "consul", map[string]string{"1.16.1": bin}, []*openpgp.Entity{key}); err != nil {
		t.Fatal(err)
	}

	code, out, errw := run(t, "release", "fetch", "-url", srv.URL(), "-public-key", pub, "-allow-insecure-http", "-os", "linux", "-arch", "amd64", "consul", "1.16.1")
	if code != ExitOK || !strings.Contains(out, "verified consul 1.16.1") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errw)
	}
	code, _, errw = run(t, "release", "fetch", "-url", srv.URL(), "-public-key", otherPub, "-allow-insecure-http", "-os", "linux", "-arch", "amd64", "consul", "1.16.1")
	if code != ExitError || !strings.Contains(strings.ToLower(errw), "key") {
		t.Fatalf("an unpinned signer must fail: exit %d, stderr: %s", code, errw)
	}
	code, _, errw = run(t, "release", "fetch", "-url", srv.URL(), "-public-key", pub, "-allow-insecure-http", "-os", "linux", "-arch", "amd64", "consul", "1.16.9")
	if code != ExitError || !strings.Contains(errw, "not found") {
		t.Fatalf("a missing version must say so: exit %d, stderr: %s", code, errw)
	}
}
