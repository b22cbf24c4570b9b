// Package mirror owns the local release mirror used by tests, the demo and scripts: it generates test signing
// keys and writes a directory tree in exactly the releases.hashicorp.com layout (zips, SHA256SUMS, detached
// signatures, index.json files), signed with real OpenPGP keys, and serves it over plain HTTP on loopback.
// It also builds deliberately hostile releases so the verifier's failure paths can be proven.
package mirror

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/hashicorp/go-hclog"

	"github.com/upgrader-dev/upgrader/internal/atomicfile"
	"github.com/upgrader-dev/upgrader/internal/release"
)

// Platform is one os/arch build.
type Platform struct{ OS, Arch string }

// Options configures BuildWith. Zero values take the defaults noted per field.
type Options struct {
	Root     string            // mirror root directory
	BaseURL  string            // the URL the tree will be served at (for the absolute "url" fields)
	Product  string            // e.g. "consul"
	Binaries map[string]string // version -> binary path (may be empty when Entries supplies everything)
	Signers  []*openpgp.Entity // signers[0] also signs the plain .sig; each gets a <KEYID>.sig

	Platforms []Platform   // default: linux/amd64
	SignTime  time.Time    // signature creation time; zero: time.Now (set it to sign with a since-expired key)
	Logger    hclog.Logger // nil: discard

	// Entries, when set, replaces the archive contents for a version (hostile archives in tests). The
	// default is one entry named Product, mode 0755, streamed from the binary.
	Entries func(version, binaryPath string) []ZipEntry
	// NoPlainSignature omits <sums>.sig (only key-ID-suffixed signatures are published).
	NoPlainSignature bool
	// NoKeyIDSignatures omits the key-ID-suffixed signatures.
	NoKeyIDSignatures bool
}

// Result reports what BuildWith wrote and how long it took.
type Result struct {
	Versions map[string]VersionFiles
	Elapsed  time.Duration
}

// VersionFiles are the paths written for one version.
type VersionFiles struct {
	Dir        string
	Zips       map[Platform]string // platform -> zip path
	ZipSHA256  map[Platform]string
	SHA256SUMS string
	Signatures []string // plain first (if any), then key-ID-suffixed
	Index      string
}

// Build writes the mirror tree for product: <root>/<p>/<v>/<p>_<v>_linux_amd64.zip (one entry named <p>,
// mode 0755), <p>_<v>_SHA256SUMS, <p>_<v>_SHA256SUMS.sig (binary detached signature by signers[0]),
// <p>_<v>_SHA256SUMS.<KEYID>.sig per signer, <root>/<p>/<v>/index.json and <root>/<p>/index.json (merged
// with versions already present). Files are replaced atomically, so a running server never serves a
// partial file.
func Build(root, baseURL, product string, binaries map[string]string, signers []*openpgp.Entity) error {
	_, err := BuildWith(Options{Root: root, BaseURL: baseURL, Product: product, Binaries: binaries, Signers: signers})
	return err
}

// BuildWith is Build with options.
func BuildWith(o Options) (*Result, error) {
	start := time.Now()
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	log := o.Logger.Named("mirror")
	if o.Root == "" || o.Product == "" || o.BaseURL == "" {
		return nil, errors.New("mirror: Root, BaseURL and Product are required")
	}
	if len(o.Signers) == 0 {
		return nil, errors.New("mirror: at least one signer is required")
	}
	for _, s := range o.Signers {
		if s.PrivateKey == nil {
			return nil, fmt.Errorf("mirror: signer %s has no private key", release.Fingerprint(s))
		}
	}
	if len(o.Platforms) == 0 {
		o.Platforms = []Platform{{"linux", "amd64"}}
	}
	if o.SignTime.IsZero() {
		o.SignTime = time.Now()
	}
	o.BaseURL = strings.TrimRight(o.BaseURL, "/")

	versions := make([]string, 0, len(o.Binaries))
	for v := range o.Binaries {
		versions = append(versions, v)
	}
	sort.Strings(versions)

	res := &Result{Versions: map[string]VersionFiles{}}
	built := map[string]*release.VersionIndex{}
	for _, v := range versions {
		vf, idx, err := buildVersion(o, v, o.Binaries[v], log)
		if err != nil {
			return nil, err
		}
		res.Versions[v] = vf
		built[v] = idx
	}
	if err := mergeProductIndex(filepath.Join(o.Root, o.Product, "index.json"), o.Product, built); err != nil {
		return nil, err
	}
	res.Elapsed = time.Since(start)
	log.Info("mirror built", "root", o.Root, "product", o.Product, "versions", strings.Join(versions, ","),
		"elapsed", res.Elapsed.Round(time.Millisecond))
	return res, nil
}

func buildVersion(o Options, version, binary string, log hclog.Logger) (VersionFiles, *release.VersionIndex, error) {
	p := o.Product
	dir := filepath.Join(o.Root, p, version)
	vf := VersionFiles{Dir: dir, Zips: map[Platform]string{}, ZipSHA256: map[Platform]string{}}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return vf, nil, fmt.Errorf("failed to create %s: %w", dir, err)
	}
	entries := []ZipEntry{{Name: p, Mode: 0o755, Path: binary}}
	if o.Entries != nil {
		entries = o.Entries(version, binary)
	}

	idx := &release.VersionIndex{Name: p, Version: version, SHASums: release.SumsName(p, version)}
	var sums bytes.Buffer
	type line struct{ name, sum string }
	var lines []line
	for _, pl := range o.Platforms {
		name := release.ZipName(p, version, pl.OS, pl.Arch)
		path := filepath.Join(dir, name)
		t0 := time.Now()
		sum, size, err := writeZip(path, entries, o.SignTime)
		if err != nil {
			return vf, nil, fmt.Errorf("failed to write %s: %w", name, err)
		}
		log.Debug("zip written", "file", name, "bytes", size, "elapsed", time.Since(t0).Round(time.Millisecond))
		vf.Zips[pl], vf.ZipSHA256[pl] = path, sum
		lines = append(lines, line{name, sum})
		idx.Builds = append(idx.Builds, release.IndexBuild{
			Name: p, Version: version, OS: pl.OS, Arch: pl.Arch, Filename: name,
			URL: o.BaseURL + "/" + p + "/" + version + "/" + name,
		})
	}
	sort.Slice(lines, func(i, j int) bool { return lines[i].name < lines[j].name })
	for _, l := range lines {
		fmt.Fprintf(&sums, "%s  %s\n", l.sum, l.name)
	}
	vf.SHA256SUMS = filepath.Join(dir, idx.SHASums)
	if err := atomicfile.WriteBytes(vf.SHA256SUMS, sums.Bytes(), 0o644); err != nil {
		return vf, nil, err
	}

	// Drop signatures from an earlier build so only this build's signers are published.
	old, _ := filepath.Glob(filepath.Join(dir, idx.SHASums+"*.sig"))
	for _, f := range old {
		if err := os.Remove(f); err != nil {
			return vf, nil, fmt.Errorf("failed to remove stale signature: %w", err)
		}
	}
	sign := func(name string, signer *openpgp.Entity) error {
		var sig bytes.Buffer
		cfg := &packet.Config{Time: func() time.Time { return o.SignTime }}
		if err := openpgp.DetachSign(&sig, signer, bytes.NewReader(sums.Bytes()), cfg); err != nil {
			return fmt.Errorf("failed to sign %s with %s: %w", idx.SHASums, release.ShortKeyID(signer), err)
		}
		path := filepath.Join(dir, name)
		if err := atomicfile.WriteBytes(path, sig.Bytes(), 0o644); err != nil {
			return err
		}
		vf.Signatures = append(vf.Signatures, path)
		return nil
	}
	if !o.NoPlainSignature {
		name := idx.SHASums + ".sig"
		if err := sign(name, o.Signers[0]); err != nil {
			return vf, nil, err
		}
		idx.SHASumsSignature = name
	}
	if !o.NoKeyIDSignatures {
		for _, s := range o.Signers {
			name := idx.SHASums + "." + release.ShortKeyID(s) + ".sig"
			if err := sign(name, s); err != nil {
				return vf, nil, err
			}
			idx.SHASumsSignatures = append(idx.SHASumsSignatures, name)
		}
	}
	if idx.SHASumsSignature != "" {
		idx.SHASumsSignatures = append(idx.SHASumsSignatures, idx.SHASumsSignature)
	}
	if idx.SHASumsSignatures == nil {
		idx.SHASumsSignatures = []string{}
	}
	vf.Index = filepath.Join(dir, "index.json")
	if err := writeJSON(vf.Index, idx); err != nil {
		return vf, nil, err
	}
	return vf, idx, nil
}

// mergeProductIndex adds the built versions to <root>/<p>/index.json, keeping versions already listed.
func mergeProductIndex(path, product string, built map[string]*release.VersionIndex) error {
	pi := release.ProductIndex{Name: product, Versions: map[string]*release.VersionIndex{}}
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &pi); err != nil {
			return fmt.Errorf("failed to decode existing %s: %w", path, err)
		}
		if pi.Name != product {
			return fmt.Errorf("mirror: %s names product %q, want %q", path, pi.Name, product)
		}
		if pi.Versions == nil {
			pi.Versions = map[string]*release.VersionIndex{}
		}
	case errors.Is(err, os.ErrNotExist):
	default:
		return fmt.Errorf("failed to read %s: %w", path, err)
	}
	for v, idx := range built {
		pi.Versions[v] = idx
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("failed to create %s: %w", filepath.Dir(path), err)
	}
	return writeJSON(path, pi)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("failed to encode %s: %w", path, err)
	}
	return atomicfile.WriteBytes(path, append(b, '\n'), 0o644)
}

// hashWriter tees writes into a SHA-256 and counts them.
type hashWriter struct {
	w io.Writer
	h hashState
	n int64
}

type hashState interface {
	io.Writer
	Sum([]byte) []byte
}

func newHashWriter(w io.Writer) *hashWriter { return &hashWriter{w: w, h: sha256.New()} }

func (hw *hashWriter) Write(p []byte) (int, error) {
	n, err := hw.w.Write(p)
	hw.h.Write(p[:n])
	hw.n += int64(n)
	return n, err
}

func (hw *hashWriter) sum() string { return hex.EncodeToString(hw.h.Sum(nil)) }
