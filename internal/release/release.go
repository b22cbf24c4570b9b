// Package release owns fetching and verifying product releases from releases.hashicorp.com or a mirror with
// the same layout: it checks the OpenPGP signature over SHA256SUMS with pinned keys, then the archive's
// SHA-256, then extracts only the expected binary into a local cache. Nothing is trusted before it is
// verified, and nothing unverified is ever left at a path a caller could use.
package release

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/hashicorp/go-hclog"
)

// DefaultBaseURL is HashiCorp's release site.
const DefaultBaseURL = "https://releases.hashicorp.com"

// Default limits. A Consul 1.16 linux/amd64 zip is ~50 MB and its binary ~150 MB; the caps leave room for
// growth while bounding what a hostile mirror can make a node download or write.
const (
	DefaultMaxIndexBytes     = 4 << 20  // index.json
	DefaultMaxSumsBytes      = 1 << 20  // SHA256SUMS
	DefaultMaxSignatureBytes = 64 << 10 // a detached signature is a few hundred bytes
	DefaultMaxArchiveBytes   = 1 << 30  // the zip
	DefaultMaxBinaryBytes    = 1 << 30  // the extracted binary
	DefaultRequestTimeout    = time.Minute
	DefaultDownloadTimeout   = 30 * time.Minute
)

// Source fetches verified releases. The zero value is not usable: set BaseURL, Keyring and CacheDir.
type Source struct {
	BaseURL           string             // e.g. https://releases.hashicorp.com or http://127.0.0.1:8600
	Keyring           openpgp.EntityList // pinned keys; DefaultKeyring() for HashiCorp's
	HTTPClient        *http.Client       // nil: a client using http.DefaultTransport
	AllowInsecureHTTP bool               // permit http:// base URLs and redirects (loopback is not exempt)
	CacheDir          string             // verified artifacts live in CacheDir/<product>/<version>/
	Logger            hclog.Logger       // nil: discard
	Now               func() time.Time   // verification time; nil: time.Now
	Limits            Limits             // zero fields take the defaults
}

// Limits bounds sizes and waits. Zero fields take the Default* values.
type Limits struct {
	MaxIndexBytes     int64
	MaxSumsBytes      int64
	MaxSignatureBytes int64
	MaxArchiveBytes   int64
	MaxBinaryBytes    int64
	RequestTimeout    time.Duration // each small request (index, sums, signature)
	DownloadTimeout   time.Duration // the archive download
}

// Artifact is a verified, extracted release in the cache.
type Artifact struct {
	Product, Version  string
	OS, Arch          string
	ZipPath           string // the verified archive, in the cache
	ZipSHA256         string // hex, as listed in the signed SHA256SUMS
	SignedByKeyID     string // issuer key ID named by the signature (16 hex; may be a subkey)
	SignerFingerprint string // primary fingerprint of the pinned key that verified it
	BinaryPath        string // CacheDir/<product>/<version>/<product>, mode 0755
	BinarySHA256      string // hex SHA-256 of the extracted binary
	FromCache         bool   // reused a previously verified artifact
}

func (s *Source) logger() hclog.Logger {
	if s.Logger == nil {
		return hclog.NewNullLogger()
	}
	return s.Logger.Named("release")
}

func (s *Source) now() func() time.Time {
	if s.Now == nil {
		return time.Now
	}
	return s.Now
}

func pick[T int64 | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

func (s *Source) requestTimeout() time.Duration {
	return pick(s.Limits.RequestTimeout, DefaultRequestTimeout)
}

func (s *Source) downloadTimeout() time.Duration {
	return pick(s.Limits.DownloadTimeout, DefaultDownloadTimeout)
}

// Fetch returns a verified release of product/version for goos/goarch, downloading it when the cache has no
// valid copy. Order: index.json, choose the signature file, verify it over SHA256SUMS with the pinned keys,
// parse SHA256SUMS, download the zip while hashing, compare, extract only the product binary. A missing
// version is ErrNotFound; every other failure names what failed.
func (s *Source) Fetch(ctx context.Context, product, version, goos, goarch string) (*Artifact, error) {
	log := s.logger().With("product", product, "version", version)
	for _, c := range [][2]string{{"product", product}, {"version", version}, {"os", goos}, {"arch", goarch}} {
		if err := checkName(c[0], c[1]); err != nil {
			return nil, err
		}
	}
	base, err := checkBaseURL(s.BaseURL, s.AllowInsecureHTTP)
	if err != nil {
		return nil, err
	}
	if len(s.Keyring) == 0 {
		return nil, fmt.Errorf("%w: no pinned keys (use release.DefaultKeyring())", ErrInvalid)
	}
	if s.CacheDir == "" {
		return nil, fmt.Errorf("%w: CacheDir is empty", ErrInvalid)
	}
	for _, k := range ExpiringKeys(s.Keyring, s.now()(), KeyExpiryWarning) {
		log.Warn("pinned release key expires soon: configure a refreshed key", "key", k.String())
	}

	dir := filepath.Join(s.CacheDir, product, version)
	if a, err := s.fromCache(dir, product, version, goos, goarch); err == nil {
		log.Debug("reusing verified release from cache", "binary", a.BinaryPath, "signer", a.SignedByKeyID)
		return a, nil
	} else if !errors.Is(err, errCacheMiss) {
		log.Warn("cached release failed re-verification; fetching again", "dir", dir, "error", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("failed to fetch %s %s: %w", product, version, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("failed to create cache dir %s: %w", dir, err)
	}

	client := s.httpClient()
	start := time.Now()

	// 1. index.json
	indexURL := fileURL(base, product, version, "index.json")
	ib, err := s.getSmall(ctx, client, indexURL, pick(s.Limits.MaxIndexBytes, DefaultMaxIndexBytes))
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("%w: %s %s not found at %s", ErrNotFound, product, version, indexURL)
		}
		return nil, fmt.Errorf("failed to fetch index for %s %s: %w", product, version, err)
	}
	idx, err := parseVersionIndex(ib, product, version)
	if err != nil {
		return nil, err
	}
	zipName, err := findBuild(idx, product, version, goos, goarch)
	if err != nil {
		return nil, err
	}

	// 2. choose and verify the signature over SHA256SUMS.
	sigName, err := chooseSignature(idx, s.Keyring)
	if err != nil {
		return nil, err
	}
	sums, sig, err := s.fetchSigned(ctx, client, base, product, version, idx.SHASums, sigName)
	if err != nil {
		return nil, err
	}
	v, err := VerifySignature(s.Keyring, sums, sig, sigName, s.now())
	if err != nil {
		return nil, fmt.Errorf("failed to verify %s %s: %w", product, version, err)
	}
	log.Debug("signature verified", "file", sigName, "issuer", v.IssuerKeyID, "signer", v.SignerFingerprint)

	// 3. only now trust SHA256SUMS.
	table, err := ParseSHA256SUMS(sums)
	if err != nil {
		return nil, fmt.Errorf("failed to parse %s: %w", idx.SHASums, err)
	}
	want, ok := table[zipName]
	if !ok {
		return nil, fmt.Errorf("%w: %s has no entry for %s", ErrChecksum, idx.SHASums, zipName)
	}

	// 4. download while hashing, compare.
	zipURL := fileURL(base, product, version, zipName)
	tmpZip, got, size, err := s.download(ctx, client, zipURL, dir, pick(s.Limits.MaxArchiveBytes, DefaultMaxArchiveBytes))
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("%w: %s %s archive missing at %s", ErrNotFound, product, version, zipURL)
		}
		return nil, fmt.Errorf("failed to download %s: %w", zipName, err)
	}
	defer os.Remove(tmpZip) // no-op once renamed
	if got != want {
		return nil, fmt.Errorf("%w: %s has SHA-256 %s, signed SHA256SUMS says %s", ErrChecksum, zipName, got, want)
	}

	// 5. extract only the binary, then commit the cache entry (record last).
	a := &Artifact{
		Product: product, Version: version, OS: goos, Arch: goarch,
		ZipPath:           filepath.Join(dir, zipName),
		ZipSHA256:         got,
		SignedByKeyID:     v.IssuerKeyID,
		SignerFingerprint: v.SignerFingerprint,
		BinaryPath:        filepath.Join(dir, product),
	}
	if a.BinarySHA256, err = extractBinary(tmpZip, product, a.BinaryPath, pick(s.Limits.MaxBinaryBytes, DefaultMaxBinaryBytes)); err != nil {
		return nil, fmt.Errorf("failed to extract %s from %s: %w", product, zipName, err)
	}
	if err := os.Rename(tmpZip, a.ZipPath); err != nil {
		return nil, fmt.Errorf("failed to move %s into the cache: %w", zipName, err)
	}
	if err := s.writeCache(dir, a, idx.SHASums, sums, sigName, sig); err != nil {
		return nil, err
	}
	log.Info("release verified", "file", zipName, "bytes", size, "signer", v.SignerFingerprint,
		"issuer", v.IssuerKeyID, "elapsed", time.Since(start).Round(time.Millisecond))
	return a, nil
}

// fetchSigned downloads SHA256SUMS and the chosen signature file. A missing file is reported as a signature
// or checksum failure (the index promised it), not as ErrNotFound.
func (s *Source) fetchSigned(ctx context.Context, client *http.Client, base *url.URL, product, version, sumsName, sigName string) ([]byte, []byte, error) {
	sigURL := fileURL(base, product, version, sigName)
	sig, err := s.getSmall(ctx, client, sigURL, pick(s.Limits.MaxSignatureBytes, DefaultMaxSignatureBytes))
	if isNotFound(err) {
		return nil, nil, fmt.Errorf("%w: signature %s listed by index.json is missing at %s", ErrSignature, sigName, sigURL)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("failed to fetch signature %s: %w", sigName, err)
	}
	sumsURL := fileURL(base, product, version, sumsName)
	sums, err := s.getSmall(ctx, client, sumsURL, pick(s.Limits.MaxSumsBytes, DefaultMaxSumsBytes))
	if isNotFound(err) {
		return nil, nil, fmt.Errorf("%w: %s is missing at %s", ErrChecksum, sumsName, sumsURL)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("failed to fetch %s: %w", sumsName, err)
	}
	return sums, sig, nil
}
