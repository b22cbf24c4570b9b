package release

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
)

// VersionIndex is <base>/<product>/<version>/index.json in the releases.hashicorp.com format.
type VersionIndex struct {
	Name              string       `json:"name"`
	Version           string       `json:"version"`
	SHASums           string       `json:"shasums"`
	SHASumsSignature  string       `json:"shasums_signature"`
	SHASumsSignatures []string     `json:"shasums_signatures"`
	Builds            []IndexBuild `json:"builds"`
	TimestampCreated  string       `json:"timestamp_created,omitempty"`
	TimestampUpdated  string       `json:"timestamp_updated,omitempty"`
	URLLicense        string       `json:"url_license,omitempty"`
	URLProjectWebsite string       `json:"url_project_website,omitempty"`
	URLSourceRepo     string       `json:"url_source_repository,omitempty"`
	URLChangelog      string       `json:"url_changelog,omitempty"`
	URLReleaseNotes   string       `json:"url_release_notes,omitempty"`
	URLDocs           string       `json:"url_docs,omitempty"`
	URLShaSums        string       `json:"url_shasums,omitempty"`
	URLShaSumsSigs    []string     `json:"url_shasums_signatures,omitempty"`
	IsPrerelease      bool         `json:"is_prerelease,omitempty"`
	LicenseClass      string       `json:"license_class,omitempty"`
	Status            *IndexStatus `json:"status,omitempty"`
}

// IndexBuild is one entry of VersionIndex.Builds. URL is informational: downloads are always built as
// <base>/<product>/<version>/<filename>, so an index cannot redirect a download elsewhere.
type IndexBuild struct {
	Name     string `json:"name"`
	Version  string `json:"version"`
	OS       string `json:"os"`
	Arch     string `json:"arch"`
	Filename string `json:"filename"`
	URL      string `json:"url"`
}

// IndexStatus is the release state some indexes carry (supported, unsupported, withdrawn).
type IndexStatus struct {
	State string `json:"state"`
}

// ProductIndex is <base>/<product>/index.json.
type ProductIndex struct {
	Name     string                   `json:"name"`
	Versions map[string]*VersionIndex `json:"versions"`
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]*$`)

// checkName validates a product, version, os or arch before it is used in a URL or a file path.
func checkName(kind, s string) error {
	if len(s) > 128 || !nameRE.MatchString(s) || strings.Contains(s, "..") {
		return fmt.Errorf("%w: %s %q (letters, digits and . _ + - only)", ErrInvalid, kind, s)
	}
	return nil
}

// ZipName is the release archive name for a platform: consul_1.16.1_linux_amd64.zip.
func ZipName(product, version, goos, goarch string) string {
	return fmt.Sprintf("%s_%s_%s_%s.zip", product, version, goos, goarch)
}

// SumsName is the checksum file name: consul_1.16.1_SHA256SUMS.
func SumsName(product, version string) string {
	return fmt.Sprintf("%s_%s_SHA256SUMS", product, version)
}

// parseVersionIndex decodes and checks an index.json for product/version. Pure.
func parseVersionIndex(b []byte, product, version string) (*VersionIndex, error) {
	var idx VersionIndex
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&idx); err != nil {
		return nil, fmt.Errorf("%w: failed to decode index.json for %s %s: %w", ErrInvalid, product, version, err)
	}
	if idx.Name != product || idx.Version != version {
		return nil, fmt.Errorf("%w: index.json describes %q %q, want %s %s", ErrInvalid, idx.Name, idx.Version, product, version)
	}
	if idx.SHASums == "" {
		idx.SHASums = SumsName(product, version)
	}
	if idx.SHASums != SumsName(product, version) {
		return nil, fmt.Errorf("%w: index.json names checksum file %q, want %q", ErrInvalid, idx.SHASums, SumsName(product, version))
	}
	return &idx, nil
}

// findBuild returns the archive file name for goos/goarch. The name must be the canonical one: an index
// cannot point the download at another file.
func findBuild(idx *VersionIndex, product, version, goos, goarch string) (string, error) {
	want := ZipName(product, version, goos, goarch)
	for _, b := range idx.Builds {
		if b.OS != goos || b.Arch != goarch {
			continue
		}
		if b.Filename != "" && b.Filename != want {
			return "", fmt.Errorf("%w: index.json names archive %q for %s/%s, want %q", ErrInvalid, b.Filename, goos, goarch, want)
		}
		return want, nil
	}
	return "", fmt.Errorf("%w: %s %s has no %s/%s build", ErrNotFound, product, version, goos, goarch)
}

// chooseSignature picks the signature file to verify, following HashiCorp's installer: a key-ID-suffixed
// name (<sums>.<KEYID>.sig) for a key in the keyring first, in keyring order, else the plain <sums>.sig.
// Only names listed by the index are chosen, except the plain name, which is assumed when the index lists no
// signature at all. Pure.
func chooseSignature(idx *VersionIndex, keyring openpgp.EntityList) (string, error) {
	listed := map[string]bool{}
	for _, s := range idx.SHASumsSignatures {
		listed[s] = true
	}
	if idx.SHASumsSignature != "" {
		listed[idx.SHASumsSignature] = true
	}
	for _, e := range keyring {
		for _, id := range keyIDSuffixes(e) {
			name := idx.SHASums + "." + id + ".sig"
			if listed[name] {
				return name, nil
			}
		}
	}
	plain := idx.SHASums + ".sig"
	if listed[plain] || len(listed) == 0 {
		return plain, nil
	}
	return "", fmt.Errorf("%w: %s lists no signature for a pinned key (have %s; pinned %s)",
		ErrUnknownKey, idx.SHASums, strings.Join(sortedKeys(listed), ", "), strings.Join(shortIDs(keyring), ", "))
}

// keyIDSuffixes lists the suffixes a signature file for this key may carry: the short (8) and long (16)
// upper-case primary key ID.
func keyIDSuffixes(e *openpgp.Entity) []string {
	return []string{ShortKeyID(e), e.PrimaryKey.KeyIdString()}
}

func shortIDs(keyring openpgp.EntityList) []string {
	out := make([]string, 0, len(keyring))
	for _, e := range keyring {
		out = append(out, ShortKeyID(e))
	}
	return out
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
