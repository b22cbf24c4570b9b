package release

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/upgrader-dev/upgrader/internal/atomicfile"
)

// cacheRecordName is the small JSON written last into CacheDir/<product>/<version>/: its presence means the
// entry was complete and verified.
const cacheRecordName = "artifact.json"

// errCacheMiss means there is no usable cache entry for this request (none, or one for another platform).
var errCacheMiss = errors.New("release: cache miss")

type cacheRecord struct {
	Product           string    `json:"product"`
	Version           string    `json:"version"`
	OS                string    `json:"os"`
	Arch              string    `json:"arch"`
	Zip               string    `json:"zip"`
	ZipSHA256         string    `json:"zip_sha256"`
	Binary            string    `json:"binary"`
	BinarySHA256      string    `json:"binary_sha256"`
	SHASums           string    `json:"shasums"`
	Signature         string    `json:"signature"`
	SignedByKeyID     string    `json:"signed_by_key_id"`
	SignerFingerprint string    `json:"signer_fingerprint"`
	VerifiedAt        time.Time `json:"verified_at"`
}

// fromCache returns the cached artifact after re-verifying it: the stored signature still verifies over the
// stored SHA256SUMS with the current keyring at the current time (so a key removed from the keyring, or
// expired, invalidates the cache), SHA256SUMS still lists the recorded zip hash, and both the zip and the
// binary re-hash to the recorded values. Any failure other than errCacheMiss means "fetch again".
func (s *Source) fromCache(dir, product, version, goos, goarch string) (*Artifact, error) {
	b, err := os.ReadFile(filepath.Join(dir, cacheRecordName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, errCacheMiss
	}
	if err != nil {
		return nil, fmt.Errorf("failed to read cache record: %w", err)
	}
	var rec cacheRecord
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return nil, fmt.Errorf("failed to decode cache record: %w", err)
	}
	if rec.Product != product || rec.Version != version {
		return nil, fmt.Errorf("cache record is for %s %s", rec.Product, rec.Version)
	}
	if rec.OS != goos || rec.Arch != goarch {
		return nil, fmt.Errorf("%w: cached %s/%s, want %s/%s", errCacheMiss, rec.OS, rec.Arch, goos, goarch)
	}
	if rec.Zip != ZipName(product, version, goos, goarch) || rec.Binary != product || rec.SHASums != SumsName(product, version) {
		return nil, errors.New("cache record names unexpected files")
	}
	if err := checkFileName(rec.Signature); err != nil {
		return nil, fmt.Errorf("cache record: %w", err)
	}

	sums, err := os.ReadFile(filepath.Join(dir, rec.SHASums))
	if err != nil {
		return nil, fmt.Errorf("failed to read cached checksums: %w", err)
	}
	sig, err := os.ReadFile(filepath.Join(dir, rec.Signature))
	if err != nil {
		return nil, fmt.Errorf("failed to read cached signature: %w", err)
	}
	v, err := VerifySignature(s.Keyring, sums, sig, rec.Signature, s.now())
	if err != nil {
		return nil, err
	}
	if v.SignerFingerprint != rec.SignerFingerprint {
		return nil, fmt.Errorf("cached signature verified by %s, record says %s", v.SignerFingerprint, rec.SignerFingerprint)
	}
	table, err := ParseSHA256SUMS(sums)
	if err != nil {
		return nil, err
	}
	if table[rec.Zip] != rec.ZipSHA256 {
		return nil, fmt.Errorf("%w: cached SHA256SUMS does not list %s with the recorded hash", ErrChecksum, rec.Zip)
	}

	a := &Artifact{
		Product: product, Version: version, OS: goos, Arch: goarch,
		ZipPath:           filepath.Join(dir, rec.Zip),
		ZipSHA256:         rec.ZipSHA256,
		SignedByKeyID:     v.IssuerKeyID,
		SignerFingerprint: v.SignerFingerprint,
		BinaryPath:        filepath.Join(dir, rec.Binary),
		BinarySHA256:      rec.BinarySHA256,
		FromCache:         true,
	}
	for _, f := range []struct {
		path, want string
		exec       bool
	}{{a.ZipPath, rec.ZipSHA256, false}, {a.BinaryPath, rec.BinarySHA256, true}} {
		fi, err := os.Lstat(f.path)
		if err != nil {
			return nil, fmt.Errorf("failed to stat cached %s: %w", filepath.Base(f.path), err)
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("cached %s is not a regular file", filepath.Base(f.path))
		}
		if f.exec && fi.Mode().Perm() != 0o755 {
			return nil, fmt.Errorf("cached binary has mode %v, want 0755", fi.Mode().Perm())
		}
		got, err := hashFile(f.path)
		if err != nil {
			return nil, err
		}
		if got != f.want {
			return nil, fmt.Errorf("%w: cached %s has SHA-256 %s, recorded %s", ErrChecksum, filepath.Base(f.path), got, f.want)
		}
	}
	return a, nil
}

// writeCache stores the verified SHA256SUMS and signature next to the artifact, then the record (last).
func (s *Source) writeCache(dir string, a *Artifact, sumsName string, sums []byte, sigName string, sig []byte) error {
	if err := atomicfile.WriteBytes(filepath.Join(dir, sumsName), sums, 0o644); err != nil {
		return err
	}
	if err := atomicfile.WriteBytes(filepath.Join(dir, sigName), sig, 0o644); err != nil {
		return err
	}
	rec := cacheRecord{
		Product: a.Product, Version: a.Version, OS: a.OS, Arch: a.Arch,
		Zip: filepath.Base(a.ZipPath), ZipSHA256: a.ZipSHA256,
		Binary: filepath.Base(a.BinaryPath), BinarySHA256: a.BinarySHA256,
		SHASums: sumsName, Signature: sigName,
		SignedByKeyID: a.SignedByKeyID, SignerFingerprint: a.SignerFingerprint,
		VerifiedAt: s.now()().UTC(),
	}
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("failed to encode cache record: %w", err)
	}
	return atomicfile.WriteBytes(filepath.Join(dir, cacheRecordName), append(b, '\n'), 0o644)
}
