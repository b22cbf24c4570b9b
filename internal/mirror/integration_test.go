package mirror_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/hashicorp/go-hclog"

	"github.com/upgrader-dev/upgrader/internal/mirror"
	"github.com/upgrader-dev/upgrader/internal/release"
	"github.com/upgrader-dev/upgrader/internal/testbin"
)

// TestRealConsulMirror builds a mirror from the real consul 1.16.1 binary, serves it on loopback and fetches
// it back through the release verifier: the path every node takes, end to end, with real crypto.
func TestRealConsulMirror(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a ~115 MB zip; skipped in -short")
	}
	bin, err := testbin.Path("1.16.1")
	if err != nil {
		t.Skipf("consul 1.16.1 test binary not built (run scripts/testbin.sh): %v", err)
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "it", Output: logWriter{t}, Level: hclog.Info})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	key := genKey(t, "upgrader test", time.Now().Add(-time.Minute), 0)
	root := t.TempDir()
	srv, err := mirror.Serve(ctx, "127.0.0.1:0", root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })

	res, err := mirror.BuildWith(mirror.Options{Root: root, BaseURL: srv.URL(), Product: "consul",
		Binaries: map[string]string{"1.16.1": bin}, Signers: []*openpgp.Entity{key}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	zipPath := res.Versions["1.16.1"].Zips[mirror.Platform{OS: "linux", Arch: "amd64"}]
	zi, _ := os.Stat(zipPath)
	bi, _ := os.Stat(bin)
	t.Logf("mirror build: %d-byte binary -> %d-byte zip in %s", bi.Size(), zi.Size(), res.Elapsed.Round(time.Millisecond))

	src := &release.Source{BaseURL: srv.URL(), Keyring: openpgp.EntityList{key}, AllowInsecureHTTP: true,
		CacheDir: t.TempDir(), Logger: log}
	start := time.Now()
	a, err := src.Fetch(ctx, "consul", "1.16.1", "linux", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fetch+verify+extract: %s", time.Since(start).Round(time.Millisecond))
	if want, got := sha256File(t, bin), a.BinarySHA256; want != got || sha256File(t, a.BinaryPath) != want {
		t.Fatalf("extracted binary %s differs from the source %s", got, want)
	}

	out, err := exec.CommandContext(ctx, a.BinaryPath, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "Consul v1.16.1") {
		t.Fatalf("consul version: %v: %s", err, out)
	}

	start = time.Now()
	again, err := src.Fetch(ctx, "consul", "1.16.1", "linux", "amd64")
	if err != nil || !again.FromCache {
		t.Fatalf("cached fetch: %v (from cache %v)", err, again != nil && again.FromCache)
	}
	t.Logf("cached fetch (re-verify signature, re-hash zip and binary): %s", time.Since(start).Round(time.Millisecond))
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
