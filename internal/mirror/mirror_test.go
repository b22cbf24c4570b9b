package mirror_test

import (
	"archive/zip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"go.uber.org/goleak"

	"github.com/upgrader-dev/upgrader/internal/mirror"
	"github.com/upgrader-dev/upgrader/internal/release"
)

func genKey(t testing.TB, name string, created time.Time, lifetime time.Duration) *openpgp.Entity {
	t.Helper()
	k, err := mirror.GenerateKey(name, created, lifetime)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writeBinary(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "consul")
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func TestBuildLayout(t *testing.T) {
	now := time.Now()
	a, b := genKey(t, "a", now.Add(-time.Hour), 0), genKey(t, "b", now.Add(-time.Hour), 0)
	root := t.TempDir()
	const base = "http://127.0.0.1:8600"
	bin0, bin1 := writeBinary(t, "consul 1.16.0\n"), writeBinary(t, "consul 1.16.1\n")

	// Two separate builds: the product index must merge them.
	if err := mirror.Build(root, base, "consul", map[string]string{"1.16.0": bin0}, []*openpgp.Entity{a}); err != nil {
		t.Fatal(err)
	}
	if err := mirror.Build(root, base+"/", "consul", map[string]string{"1.16.1": bin1}, []*openpgp.Entity{a, b}); err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(root, "consul", "1.16.1")
	var names []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		names = append(names, e.Name())
	}
	want := []string{
		"consul_1.16.1_SHA256SUMS",
		"consul_1.16.1_SHA256SUMS." + release.ShortKeyID(a) + ".sig",
		"consul_1.16.1_SHA256SUMS." + release.ShortKeyID(b) + ".sig",
		"consul_1.16.1_SHA256SUMS.sig",
		"consul_1.16.1_linux_amd64.zip",
		"index.json",
	}
	sort.Strings(want)
	if strings.Join(names, "\n") != strings.Join(want, "\n") {
		t.Fatalf("files:\n%s\nwant:\n%s", strings.Join(names, "\n"), strings.Join(want, "\n"))
	}
	if id := release.ShortKeyID(a); len(id) != 8 || id != strings.ToUpper(id) || !strings.HasSuffix(a.PrimaryKey.KeyIdString(), id) {
		t.Fatalf("short key ID %q is not the last 8 upper-case hex of %s", id, a.PrimaryKey.KeyIdString())
	}

	// The archive: exactly one entry, named consul, mode 0755, with the binary's bytes.
	zr, err := zip.OpenReader(filepath.Join(dir, "consul_1.16.1_linux_amd64.zip"))
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	if len(zr.File) != 1 || zr.File[0].Name != "consul" || zr.File[0].Mode() != 0o755 || zr.File[0].Method != zip.Deflate {
		t.Fatalf("zip entries: %+v", zr.File)
	}
	rc, _ := zr.File[0].Open()
	content, _ := io.ReadAll(rc)
	rc.Close()
	if string(content) != "consul 1.16.1\n" {
		t.Fatalf("entry content %q", content)
	}

	// SHA256SUMS lists the zip with its real hash, in the strict format.
	sums, _ := os.ReadFile(filepath.Join(dir, "consul_1.16.1_SHA256SUMS"))
	table, err := release.ParseSHA256SUMS(sums)
	if err != nil {
		t.Fatal(err)
	}
	zb, _ := os.ReadFile(filepath.Join(dir, "consul_1.16.1_linux_amd64.zip"))
	h := sha256.Sum256(zb)
	if table["consul_1.16.1_linux_amd64.zip"] != hex.EncodeToString(h[:]) || len(table) != 1 {
		t.Fatalf("SHA256SUMS %q", sums)
	}

	// Every signature verifies with the right key: plain by signers[0], suffixed by each.
	for sigName, signer := range map[string]*openpgp.Entity{
		"consul_1.16.1_SHA256SUMS.sig":                               a,
		"consul_1.16.1_SHA256SUMS." + release.ShortKeyID(a) + ".sig": a,
		"consul_1.16.1_SHA256SUMS." + release.ShortKeyID(b) + ".sig": b,
	} {
		sig, _ := os.ReadFile(filepath.Join(dir, sigName))
		v, err := release.VerifySignature(openpgp.EntityList{a, b}, sums, sig, sigName, nil)
		if err != nil {
			t.Fatalf("%s: %v", sigName, err)
		}
		if v.SignerFingerprint != release.Fingerprint(signer) {
			t.Fatalf("%s signed by %s", sigName, v.SignerFingerprint)
		}
	}

	// index.json in the site's format.
	var vi release.VersionIndex
	readJSON(t, filepath.Join(dir, "index.json"), &vi)
	if vi.Name != "consul" || vi.Version != "1.16.1" || vi.SHASums != "consul_1.16.1_SHA256SUMS" ||
		vi.SHASumsSignature != "consul_1.16.1_SHA256SUMS.sig" || len(vi.SHASumsSignatures) != 3 {
		t.Fatalf("version index: %+v", vi)
	}
	if len(vi.Builds) != 1 || vi.Builds[0].OS != "linux" || vi.Builds[0].Arch != "amd64" ||
		vi.Builds[0].Filename != "consul_1.16.1_linux_amd64.zip" ||
		vi.Builds[0].URL != base+"/consul/1.16.1/consul_1.16.1_linux_amd64.zip" {
		t.Fatalf("builds: %+v", vi.Builds)
	}
	var pi release.ProductIndex
	readJSON(t, filepath.Join(root, "consul", "index.json"), &pi)
	if pi.Name != "consul" || len(pi.Versions) != 2 || pi.Versions["1.16.0"] == nil || pi.Versions["1.16.1"] == nil {
		t.Fatalf("product index: %+v", pi)
	}

	// Rebuilding with other signers drops the earlier signatures.
	if err := mirror.Build(root, base, "consul", map[string]string{"1.16.1": bin1}, []*openpgp.Entity{b}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "consul_1.16.1_SHA256SUMS."+release.ShortKeyID(a)+".sig")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale signature kept: %v", err)
	}
	readJSON(t, filepath.Join(root, "consul", "index.json"), &pi)
	if len(pi.Versions) != 2 {
		t.Fatalf("rebuild lost versions: %v", pi.Versions)
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".*"))
	if len(leftovers) != 0 {
		t.Fatalf("temp files left: %v", leftovers)
	}
}

func TestBuildRejects(t *testing.T) {
	k := genKey(t, "k", time.Now(), 0)
	pub := genKey(t, "pub", time.Now(), 0)
	pub.PrivateKey = nil
	bin := writeBinary(t, "x")
	cases := map[string]mirror.Options{
		"no signers":     {Root: t.TempDir(), BaseURL: "http://127.0.0.1:1", Product: "consul", Binaries: map[string]string{"1.0.0": bin}},
		"public signer":  {Root: t.TempDir(), BaseURL: "http://127.0.0.1:1", Product: "consul", Binaries: map[string]string{"1.0.0": bin}, Signers: []*openpgp.Entity{pub}},
		"no product":     {Root: t.TempDir(), BaseURL: "http://127.0.0.1:1", Signers: []*openpgp.Entity{k}},
		"missing binary": {Root: t.TempDir(), BaseURL: "http://127.0.0.1:1", Product: "consul", Binaries: map[string]string{"1.0.0": "/nonexistent/consul"}, Signers: []*openpgp.Entity{k}},
	}
	for name, o := range cases {
		if _, err := mirror.BuildWith(o); err == nil {
			t.Errorf("%s: BuildWith succeeded", name)
		}
	}
}

func TestKeys(t *testing.T) {
	now := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	k := genKey(t, "upgrader test", now, 30*24*time.Hour)
	dir := t.TempDir()
	priv := filepath.Join(dir, "keys", "signing.asc")
	if err := mirror.WritePrivateKey(priv, k); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(priv); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key file mode: %v %v", fi.Mode(), err)
	}
	back, err := mirror.ReadPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if release.Fingerprint(back) != release.Fingerprint(k) || back.PrivateKey == nil {
		t.Fatal("private key round trip changed the key")
	}
	pub := filepath.Join(dir, "pub.asc")
	if err := mirror.WritePublicKey(pub, back); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(pub)
	if strings.Contains(string(raw), "PRIVATE") {
		t.Fatal("public key file holds a private block")
	}
	el, err := release.ReadKeyring(raw)
	if err != nil {
		t.Fatal(err)
	}
	exp := release.KeyExpiries(el)[0]
	if !exp.Expires.Equal(now.Add(30 * 24 * time.Hour)) {
		t.Fatalf("expiry %s", exp.Expires)
	}
	if _, err := mirror.GenerateKey("x", now, -time.Second); err == nil {
		t.Fatal("negative lifetime accepted")
	}
}

func TestServe(t *testing.T) {
	defer goleak.VerifyNone(t)
	root := t.TempDir()
	k := genKey(t, "k", time.Now().Add(-time.Hour), 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := mirror.Serve(ctx, "127.0.0.1:0", root)
	if err != nil {
		t.Fatal(err)
	}
	if err := mirror.Build(root, srv.URL(), "consul", map[string]string{"1.16.1": writeBinary(t, "x")}, []*openpgp.Entity{k}); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	for path, ctype := range map[string]string{
		"/consul/index.json":                           "application/json",
		"/consul/1.16.1/index.json":                    "application/json",
		"/consul/1.16.1/consul_1.16.1_linux_amd64.zip": "application/zip",
	} {
		resp, err := client.Get(srv.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != ctype {
			t.Fatalf("%s: %s %q", path, resp.Status, resp.Header.Get("Content-Type"))
		}
	}
	resp, err := client.Get(srv.URL() + "/consul/9.9.9/index.json")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("missing version: %s", resp.Status)
	}
	if srv.Requests() != 4 {
		t.Fatalf("requests %d", srv.Requests())
	}
	client.CloseIdleConnections()
	cancel() // the context stops the server; Close still waits and is idempotent
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Get(srv.URL() + "/consul/index.json"); err == nil {
		t.Fatal("server still answering after Close")
	}
}

func TestServeRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", "[::]:0", "10.0.0.1:0", "example.com:80", "nonsense"} {
		if s, err := mirror.Serve(context.Background(), addr, t.TempDir()); err == nil {
			s.Close()
			t.Errorf("Serve(%q) succeeded", addr)
		}
	}
}

func TestFlipByte(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte{0x00, 0x0f}, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := mirror.FlipByte(p, -1); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	if fmt.Sprintf("%x", b) != "00f0" {
		t.Fatalf("got %x", b)
	}
	if err := mirror.FlipByte(p, 2); err == nil {
		t.Fatal("offset past the end accepted")
	}
}
