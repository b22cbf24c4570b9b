package main

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/upgrader-dev/upgrader/internal/mirror"
	"github.com/upgrader-dev/upgrader/internal/release"
	"github.com/upgrader-dev/upgrader/internal/testbin"
)

// fakeTestbin points the test binary cache at a temp dir holding small fake binaries.
func fakeTestbin(t *testing.T, versions ...string) {
	dir := t.TempDir()
	t.Setenv(testbin.EnvDir, dir)
	for _, v := range versions {
		p := filepath.Join(dir, "consul", v, "consul")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\necho Consul v"+v+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestBuildKeepsKeyAndVerifies(t *testing.T) {
	fakeTestbin(t, "1.16.0", "1.16.1")
	root := filepath.Join(t.TempDir(), "mirror")
	ctx := context.Background()
	var out, errOut bytes.Buffer
	if code := run(ctx, []string{"-root", root}, &out, &errOut); code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	t.Logf("%s", out.String())
	fi, err := os.Stat(filepath.Join(root, keyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key: %v %v", fi, err)
	}
	pub1, err := os.ReadFile(filepath.Join(root, publicKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(pub1), "PRIVATE") {
		t.Fatal("public key file holds a private key")
	}

	// A second run keeps the same key and adds a version without dropping the others.
	if code := run(ctx, []string{"-root", root, "-versions", "1.16.1"}, &out, &errOut); code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	pub2, _ := os.ReadFile(filepath.Join(root, publicKeyFile))
	k1, _ := release.ReadKeyring(pub1)
	k2, err := release.ReadKeyring(pub2)
	if err != nil || release.Fingerprint(k1[0]) != release.Fingerprint(k2[0]) {
		t.Fatalf("key changed between runs: %v", err)
	}

	// The published key verifies what the mirror serves.
	srv, err := mirror.Serve(ctx, "127.0.0.1:0", filepath.Join(root, treeDir))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	src := &release.Source{BaseURL: srv.URL(), Keyring: k2, AllowInsecureHTTP: true, CacheDir: t.TempDir()}
	for _, v := range []string{"1.16.0", "1.16.1"} {
		a, err := src.Fetch(ctx, "consul", v, "linux", "amd64")
		if err != nil {
			t.Fatalf("fetch %s: %v", v, err)
		}
		if b, _ := os.ReadFile(a.BinaryPath); !strings.Contains(string(b), "Consul v"+v) {
			t.Fatalf("%s: wrong binary %q", v, b)
		}
	}
}

func TestServeUntilInterrupted(t *testing.T) {
	defer goleak.VerifyNone(t)
	fakeTestbin(t, "1.16.1")
	root := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-root", root, "-serve", "127.0.0.1:0", "-versions", "1.16.1"}, &out, &errOut)
	}()

	re := regexp.MustCompile(`serving .* at (http://127\.0\.0\.1:\d+)`)
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var url string
	for url == "" {
		select {
		case <-deadline.C:
			t.Fatalf("mirror never reported serving: %s %s", out.String(), errOut.String())
		case code := <-done:
			t.Fatalf("mirror exited %d: %s", code, errOut.String())
		case <-tick.C:
			if m := re.FindStringSubmatch(out.String()); m != nil {
				url = m[1]
			}
		}
	}
	pub, _ := os.ReadFile(filepath.Join(root, publicKeyFile))
	keys, err := release.ReadKeyring(pub)
	if err != nil {
		t.Fatal(err)
	}
	src := &release.Source{BaseURL: url, Keyring: keys, AllowInsecureHTTP: true, CacheDir: t.TempDir()}
	if _, err := src.Fetch(ctx, "consul", "1.16.1", "linux", "amd64"); err != nil {
		t.Fatal(err)
	}
	// The private signing key lives beside the served tree, never in it.
	for _, path := range []string{"/" + keyFile, "/../" + keyFile} {
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("GET %s answered %d: the private key must not be served", path, resp.StatusCode)
		}
	}
	if !strings.Contains(out.String(), `url                 = "`+url+`"`) {
		t.Fatalf("config snippet does not name the served URL:\n%s", out.String())
	}
	cancel()
	if code := <-done; code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
}

func TestUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	for _, args := range [][]string{{}, {"-root"}, {"-root", "x", "extra"}, {"-root", "x", "-versions", ","}} {
		if code := run(context.Background(), args, &out, &errOut); code != exitUsage {
			t.Errorf("run(%q) = %d, want %d", args, code, exitUsage)
		}
	}
}
