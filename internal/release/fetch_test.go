package release_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/hashicorp/go-hclog"

	"github.com/upgrader-dev/upgrader/internal/mirror"
	"github.com/upgrader-dev/upgrader/internal/release"
)

const (
	product = "consul"
	version = "1.16.1"
)

// keys shared by the Fetch tests; Ed25519 generation takes milliseconds.
type testKeys struct {
	a, b, stranger, expired *openpgp.Entity
	sub                     *openpgp.Entity // signs with a subkey, like HashiCorp's key
	now                     time.Time
}

func newKeys(t *testing.T) testKeys {
	now := time.Now()
	k := testKeys{
		a:        genKey(t, "key-a", now.Add(-time.Hour), 0),
		b:        genKey(t, "key-b rotated in", now.Add(-time.Hour), 0),
		stranger: genKey(t, "stranger", now.Add(-time.Hour), 0),
		// Created two years ago, valid one year: it signed while valid, it is expired now.
		expired: genKey(t, "expired", now.Add(-2*365*24*time.Hour), 365*24*time.Hour),
		sub:     genKey(t, "subkey-signer", now.Add(-time.Hour), 0),
		now:     now,
	}
	cfg := &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, Curve: packet.Curve25519, Time: func() time.Time { return now.Add(-time.Minute) }}
	if err := k.sub.AddSigningSubkey(cfg); err != nil {
		t.Fatal(err)
	}
	return k
}

// served is a mirror tree behind an httptest server on 127.0.0.1 that counts requests.
type served struct {
	root string
	url  string
	hits atomic.Int64
}

func serve(t *testing.T) *served {
	t.Helper()
	s := &served{root: t.TempDir()}
	files := http.FileServer(http.Dir(s.root))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

func fakeBinary(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "consul")
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func testLogger(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Output: tWriter{t}, Level: hclog.Debug})
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newSource(t *testing.T, url string, keyring ...*openpgp.Entity) *release.Source {
	return &release.Source{
		BaseURL:           url,
		Keyring:           keyring,
		AllowInsecureHTTP: true,
		CacheDir:          t.TempDir(),
		Logger:            testLogger(t),
	}
}

// resign rewrites SHA256SUMS with content and re-signs it with signer (plain and suffixed signatures), so
// the signature is valid over a malformed checksum file.
func resign(t *testing.T, vf mirror.VersionFiles, signer *openpgp.Entity, content []byte) {
	t.Helper()
	if err := os.WriteFile(vf.SHA256SUMS, content, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, sigPath := range vf.Signatures {
		var sig bytes.Buffer
		if err := openpgp.DetachSign(&sig, signer, bytes.NewReader(content), &packet.Config{}); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(sigPath, sig.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestF13_FetchVerification(t *testing.T) {
	k := newKeys(t)
	const body = "#!/bin/sh\necho consul v1.16.1\n"
	bin := fakeBinary(t, body)
	zipOf := func(vf mirror.VersionFiles) string { return vf.Zips[mirror.Platform{OS: "linux", Arch: "amd64"}] }
	sumsLine := func(vf mirror.VersionFiles) string {
		b, _ := os.ReadFile(vf.SHA256SUMS)
		return string(b)
	}

	cases := []struct {
		name    string
		build   func(o *mirror.Options)
		tamper  func(t *testing.T, vf mirror.VersionFiles)
		source  func(s *release.Source)
		version string // default version
		arch    string // default amd64
		wantErr error
		wantMsg []string // substrings of the error
		signer  *openpgp.Entity
	}{
		{name: "valid release", signer: k.a},
		{name: "zip with one byte flipped", wantErr: release.ErrChecksum, wantMsg: []string{"SHA-256"},
			tamper: func(t *testing.T, vf mirror.VersionFiles) { must(t, mirror.FlipByte(zipOf(vf), -30)) }},
		{name: "SHA256SUMS with one byte flipped", wantErr: release.ErrSignature,
			tamper: func(t *testing.T, vf mirror.VersionFiles) { must(t, mirror.FlipByte(vf.SHA256SUMS, 3)) }},
		{name: "signature file replaced by garbage", wantErr: release.ErrSignature,
			tamper: func(t *testing.T, vf mirror.VersionFiles) {
				for _, s := range vf.Signatures {
					must(t, os.WriteFile(s, []byte("not a signature"), 0o644))
				}
			}},
		{name: "signature by a key that is not pinned", wantErr: release.ErrUnknownKey,
			build:   func(o *mirror.Options) { o.Signers = []*openpgp.Entity{k.stranger} },
			wantMsg: []string{k.stranger.PrimaryKey.KeyIdString(), "not in the pinned keyring"}},
		{name: "signature by an expired pinned key", wantErr: release.ErrKeyExpired,
			build: func(o *mirror.Options) {
				o.Signers = []*openpgp.Entity{k.expired}
				o.SignTime = k.now.Add(-18 * 30 * 24 * time.Hour)
			},
			source:  func(s *release.Source) { s.Keyring = openpgp.EntityList{k.expired} },
			wantMsg: []string{k.expired.PrimaryKey.KeyIdString(), "expired on"}},
		{name: "signed by the rotated-in second pinned key", signer: k.b,
			build:  func(o *mirror.Options) { o.Signers = []*openpgp.Entity{k.b} },
			source: func(s *release.Source) { s.Keyring = openpgp.EntityList{k.a, k.b} }},
		{name: "signed by a signing subkey, suffix names the primary", signer: k.sub,
			build:  func(o *mirror.Options) { o.Signers = []*openpgp.Entity{k.sub} },
			source: func(s *release.Source) { s.Keyring = openpgp.EntityList{k.sub} }},
		{name: "key-ID-suffixed signature preferred over a foreign plain one", signer: k.a,
			build: func(o *mirror.Options) { o.Signers = []*openpgp.Entity{k.stranger, k.a} }},
		{name: "only key-ID-suffixed signatures published", signer: k.a,
			build: func(o *mirror.Options) { o.NoPlainSignature = true }},
		{name: "only the plain signature published", signer: k.a,
			build: func(o *mirror.Options) { o.NoKeyIDSignatures = true }},
		{name: "only signatures for other keys published", wantErr: release.ErrUnknownKey,
			build: func(o *mirror.Options) { o.Signers = []*openpgp.Entity{k.stranger}; o.NoPlainSignature = true }},
		{name: "missing version", version: "9.9.9", wantErr: release.ErrNotFound,
			wantMsg: []string{"consul 9.9.9 not found at http://127.0.0.1:", "/consul/9.9.9/index.json"}},
		{name: "no build for the platform", arch: "arm64", wantErr: release.ErrNotFound, wantMsg: []string{"linux/arm64"}},
		{name: "signed SHA256SUMS lacks the archive", wantErr: release.ErrChecksum, wantMsg: []string{"no entry"},
			tamper: func(t *testing.T, vf mirror.VersionFiles) {
				resign(t, vf, k.a, []byte(strings.Replace(sumsLine(vf), "linux_amd64", "linux_386", 1)))
			}},
		{name: "signed SHA256SUMS with a duplicate entry", wantErr: release.ErrChecksum, wantMsg: []string{"duplicate"},
			tamper: func(t *testing.T, vf mirror.VersionFiles) {
				resign(t, vf, k.a, []byte(sumsLine(vf)+sumsLine(vf)))
			}},
		{name: "archive entry is a path traversal", wantErr: release.ErrArchive, wantMsg: []string{"traversal"},
			build: entries(mirror.ZipEntry{Name: "../consul", Data: []byte("x")}, mirror.ZipEntry{Name: "consul", Data: []byte(body), Mode: 0o755})},
		{name: "archive entry has an absolute name", wantErr: release.ErrArchive, wantMsg: []string{"absolute"},
			build: entries(mirror.ZipEntry{Name: "/usr/local/bin/consul", Data: []byte("x")})},
		{name: "archive binary is a symlink", wantErr: release.ErrArchive, wantMsg: []string{"not a regular file"},
			build: entries(mirror.ZipEntry{Name: "consul", LinkTarget: "/bin/sh"})},
		{name: "archive holds a symlink beside the binary", wantErr: release.ErrArchive, wantMsg: []string{"not a regular file"},
			build: entries(mirror.ZipEntry{Name: "consul", Data: []byte(body), Mode: 0o755}, mirror.ZipEntry{Name: "link", LinkTarget: "/etc/passwd"})},
		{name: "archive holds two copies of the binary", wantErr: release.ErrArchive, wantMsg: []string{"more than one"},
			build: entries(mirror.ZipEntry{Name: "consul", Data: []byte(body), Mode: 0o755}, mirror.ZipEntry{Name: "consul", Data: []byte("evil"), Mode: 0o755})},
		{name: "archive lacks the binary", wantErr: release.ErrArchive, wantMsg: []string{"no entry named"},
			build: entries(mirror.ZipEntry{Name: "nomad", Data: []byte(body), Mode: 0o755})},
		{name: "archive binary in a subdirectory only", wantErr: release.ErrArchive, wantMsg: []string{"no entry named"},
			build: entries(mirror.ZipEntry{Name: "bin/", Mode: 0o755}, mirror.ZipEntry{Name: "bin/consul", Data: []byte(body), Mode: 0o755})},
		{name: "extra license file is ignored", signer: k.a,
			build: entries(mirror.ZipEntry{Name: "LICENSE.txt", Data: []byte("MPL")}, mirror.ZipEntry{Name: "consul", Data: []byte(body), Mode: 0o755})},
		{name: "archive binary over the size cap", wantErr: release.ErrTooLarge,
			build:  entries(mirror.ZipEntry{Name: "consul", Zeros: 3 << 20, Mode: 0o755}),
			source: func(s *release.Source) { s.Limits.MaxBinaryBytes = 1 << 20 }},
		// archive/zip stops at the declared size; the byte count in extractBinary is a second guard.
		{name: "zip bomb with a lying size header", wantErr: release.ErrArchive, wantMsg: []string{"not a valid zip"},
			build:  entries(mirror.ZipEntry{Name: "consul", Zeros: 3 << 20, Mode: 0o755, DeclaredSize: 100}),
			source: func(s *release.Source) { s.Limits.MaxBinaryBytes = 1 << 20 }},
		{name: "archive over the download cap", wantErr: release.ErrTooLarge,
			source: func(s *release.Source) { s.Limits.MaxArchiveBytes = 64 }},
		{name: "plain http refused unless allowed", wantErr: release.ErrInsecureURL, wantMsg: []string{"allow_insecure_http", "-allow-insecure-http"},
			source: func(s *release.Source) { s.AllowInsecureHTTP = false }},
		{name: "index names another archive", wantErr: release.ErrInvalid,
			tamper: func(t *testing.T, vf mirror.VersionFiles) {
				b, _ := os.ReadFile(vf.Index)
				must(t, os.WriteFile(vf.Index, bytes.Replace(b, []byte(`"filename": "consul_1.16.1_linux_amd64.zip"`), []byte(`"filename": "evil.zip"`), 1), 0o644))
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := serve(t)
			o := mirror.Options{Root: srv.root, BaseURL: srv.url, Product: product,
				Binaries: map[string]string{version: bin}, Signers: []*openpgp.Entity{k.a}, Logger: testLogger(t)}
			if tc.build != nil {
				tc.build(&o)
			}
			res, err := mirror.BuildWith(o)
			if err != nil {
				t.Fatal(err)
			}
			if tc.tamper != nil {
				tc.tamper(t, res.Versions[version])
			}
			src := newSource(t, srv.url, k.a)
			if tc.source != nil {
				tc.source(src)
			}
			v, arch := version, "amd64"
			if tc.version != "" {
				v = tc.version
			}
			if tc.arch != "" {
				arch = tc.arch
			}
			a, err := src.Fetch(context.Background(), product, v, "linux", arch)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				for _, m := range tc.wantMsg {
					if !strings.Contains(err.Error(), m) {
						t.Errorf("error %q does not mention %q", err, m)
					}
				}
				t.Logf("rejected: %v", err)
				assertNothingUsable(t, src.CacheDir, v)
				return
			}
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			checkArtifact(t, a, body, tc.signer)
		})
	}
}

// entries returns a build option replacing the archive contents.
func entries(es ...mirror.ZipEntry) func(o *mirror.Options) {
	return func(o *mirror.Options) {
		o.Entries = func(string, string) []mirror.ZipEntry { return es }
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// assertNothingUsable checks that a failed fetch left no binary and no cache record behind.
func assertNothingUsable(t *testing.T, cacheDir, v string) {
	t.Helper()
	for _, name := range []string{product, "artifact.json"} {
		if _, err := os.Lstat(filepath.Join(cacheDir, product, v, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("failed fetch left %s behind (err=%v)", name, err)
		}
	}
	left, _ := filepath.Glob(filepath.Join(cacheDir, product, v, ".*"))
	if len(left) != 0 {
		t.Errorf("failed fetch left temp files: %v", left)
	}
}

func checkArtifact(t *testing.T, a *release.Artifact, body string, signer *openpgp.Entity) {
	t.Helper()
	got, err := os.ReadFile(a.BinaryPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != body {
		t.Fatalf("binary content %q", got)
	}
	fi, err := os.Stat(a.BinaryPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o755 {
		t.Fatalf("binary mode %v", fi.Mode())
	}
	if filepath.Base(a.BinaryPath) != product || filepath.Base(filepath.Dir(a.BinaryPath)) != a.Version {
		t.Fatalf("binary path %s", a.BinaryPath)
	}
	signing, ok := signer.SigningKey(time.Now())
	if !ok {
		t.Fatal("signer has no signing key")
	}
	if a.SignedByKeyID != signing.PublicKey.KeyIdString() || a.SignerFingerprint != release.Fingerprint(signer) {
		t.Fatalf("signed by %s (%s), want %s (%s)", a.SignedByKeyID, a.SignerFingerprint, signing.PublicKey.KeyIdString(), release.Fingerprint(signer))
	}
	if _, err := os.Stat(a.ZipPath); err != nil {
		t.Fatalf("zip not kept: %v", err)
	}
	if len(a.ZipSHA256) != 64 {
		t.Fatalf("zip sha %q", a.ZipSHA256)
	}
}

func TestF13_FetchCacheReverified(t *testing.T) {
	k := newKeys(t)
	srv := serve(t)
	bin := fakeBinary(t, "v1\n")
	if err := mirror.Build(srv.root, srv.url, product, map[string]string{version: bin}, []*openpgp.Entity{k.a}); err != nil {
		t.Fatal(err)
	}
	src := newSource(t, srv.url, k.a)
	ctx := context.Background()
	first, err := src.Fetch(ctx, product, version, "linux", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	if first.FromCache {
		t.Fatal("first fetch claims the cache")
	}
	hits := srv.hits.Load()
	t.Logf("first fetch: %d requests", hits)

	second, err := src.Fetch(ctx, product, version, "linux", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	if !second.FromCache || second.BinaryPath != first.BinaryPath || second.ZipSHA256 != first.ZipSHA256 || second.SignedByKeyID != first.SignedByKeyID {
		t.Fatalf("second fetch did not reuse the cache: %+v", second)
	}
	if got := srv.hits.Load(); got != hits {
		t.Fatalf("cache reuse made %d requests", got-hits)
	}

	// A tampered cached binary is detected by re-hashing, and fetched again.
	must(t, os.WriteFile(first.BinaryPath, []byte("evil\n"), 0o755))
	third, err := src.Fetch(ctx, product, version, "linux", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	if third.FromCache {
		t.Fatal("tampered cache was reused")
	}
	if b, _ := os.ReadFile(third.BinaryPath); string(b) != "v1\n" {
		t.Fatalf("binary not restored: %q", b)
	}

	// Another platform is not served from this cache entry.
	if _, err := src.Fetch(ctx, product, version, "linux", "arm64"); !errors.Is(err, release.ErrNotFound) {
		t.Fatalf("arm64: %v", err)
	}

	// A keyring that no longer pins the signer invalidates the cache: fetch again, fail closed.
	other := newSource(t, srv.url, k.b)
	other.CacheDir = src.CacheDir
	if _, err := other.Fetch(ctx, product, version, "linux", "amd64"); !errors.Is(err, release.ErrUnknownKey) {
		t.Fatalf("fetch with a keyring lacking the signer: %v, want ErrUnknownKey", err)
	}
}

func TestFetchCancelled(t *testing.T) {
	k := newKeys(t)
	srv := serve(t)
	must(t, mirror.Build(srv.root, srv.url, product, map[string]string{version: fakeBinary(t, "x")}, []*openpgp.Entity{k.a}))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := newSource(t, srv.url, k.a).Fetch(ctx, product, version, "linux", "amd64")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestFetchRejectsBadNames(t *testing.T) {
	src := newSource(t, "https://releases.hashicorp.com", genKey(t, "k", time.Now(), 0))
	for _, in := range [][4]string{
		{"../consul", "1.16.1", "linux", "amd64"},
		{"consul", "1.16.1/../../x", "linux", "amd64"},
		{"consul", "..", "linux", "amd64"},
		{"consul", "1.16.1", "linux/x", "amd64"},
		{"consul", "", "linux", "amd64"},
	} {
		_, err := src.Fetch(context.Background(), in[0], in[1], in[2], in[3])
		if !errors.Is(err, release.ErrInvalid) {
			t.Errorf("Fetch%v = %v, want ErrInvalid", in, err)
		}
	}
}
