package release

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

func TestCheckEntryName(t *testing.T) {
	cases := []struct {
		name string
		ok   bool
	}{
		{"consul", true},
		{"LICENSE.txt", true},
		{"docs/", true},
		{"docs/readme.md", true},
		{"", false},
		{"/consul", false},
		{"../consul", false},
		{"a/../../consul", false},
		{"a/..", false},
		{"./consul", false},
		{"a//consul", false},
		{"C:consul", false},
		{"c:\\consul", false},
		{"a\\..\\consul", false},
		{"con\x00sul", false},
	}
	for _, tc := range cases {
		err := checkEntryName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("checkEntryName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrArchive) {
			t.Errorf("checkEntryName(%q) = %v, want ErrArchive", tc.name, err)
		}
	}
}

func TestCheckBaseURL(t *testing.T) {
	cases := []struct {
		url      string
		insecure bool
		want     error
		wantPath string
	}{
		{url: "https://releases.hashicorp.com", wantPath: ""},
		{url: "https://mirror.example/releases/", wantPath: "/releases"},
		{url: "http://127.0.0.1:8600", want: ErrInsecureURL},
		{url: "http://localhost:8600", want: ErrInsecureURL},
		{url: "http://127.0.0.1:8600", insecure: true},
		{url: "ftp://example.com", insecure: true, want: ErrInvalid},
		{url: "file:///srv/mirror", insecure: true, want: ErrInvalid},
		{url: "", want: ErrInvalid},
		{url: "https://user:pw@example.com", want: ErrInvalid},
		{url: "https://example.com/?x=1", want: ErrInvalid},
		{url: "releases.hashicorp.com", want: ErrInvalid},
	}
	for _, tc := range cases {
		u, err := checkBaseURL(tc.url, tc.insecure)
		if tc.want != nil {
			if !errors.Is(err, tc.want) {
				t.Errorf("checkBaseURL(%q, %v) = %v, want %v", tc.url, tc.insecure, err, tc.want)
			}
			continue
		}
		if err != nil {
			t.Errorf("checkBaseURL(%q, %v) = %v", tc.url, tc.insecure, err)
			continue
		}
		if u.Path != tc.wantPath {
			t.Errorf("checkBaseURL(%q) path = %q, want %q", tc.url, u.Path, tc.wantPath)
		}
	}
	_, err := checkBaseURL("http://127.0.0.1:1", false)
	if err == nil || !strings.Contains(err.Error(), "allow_insecure_http") {
		t.Fatalf("insecure URL error should say how to allow it: %v", err)
	}
}

func testEntity(t *testing.T, name string) *openpgp.Entity {
	t.Helper()
	cfg := &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, Curve: packet.Curve25519, Time: func() time.Time {
		return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	}}
	e, err := openpgp.NewEntity(name, "", "", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestChooseSignature(t *testing.T) {
	a, b, c := testEntity(t, "a"), testEntity(t, "b"), testEntity(t, "c")
	sums := "consul_1.16.1_SHA256SUMS"
	suffixed := func(e *openpgp.Entity) string { return sums + "." + ShortKeyID(e) + ".sig" }
	cases := []struct {
		name    string
		listed  []string
		plain   string
		keyring openpgp.EntityList
		want    string
		wantErr error
	}{
		{name: "suffixed for pinned key preferred", listed: []string{suffixed(a), sums + ".sig"}, plain: sums + ".sig",
			keyring: openpgp.EntityList{a}, want: suffixed(a)},
		{name: "keyring order decides", listed: []string{suffixed(a), suffixed(b)},
			keyring: openpgp.EntityList{b, a}, want: suffixed(b)},
		{name: "rotated key second in keyring", listed: []string{suffixed(b), sums + ".sig"},
			keyring: openpgp.EntityList{a, b}, want: suffixed(b)},
		{name: "long key ID suffix", listed: []string{sums + "." + a.PrimaryKey.KeyIdString() + ".sig"},
			keyring: openpgp.EntityList{a}, want: sums + "." + a.PrimaryKey.KeyIdString() + ".sig"},
		{name: "plain when no suffix matches", listed: []string{suffixed(c), sums + ".sig"},
			keyring: openpgp.EntityList{a}, want: sums + ".sig"},
		{name: "plain assumed when index lists none", keyring: openpgp.EntityList{a}, want: sums + ".sig"},
		{name: "only foreign suffixed", listed: []string{suffixed(c)}, keyring: openpgp.EntityList{a}, wantErr: ErrUnknownKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			idx := &VersionIndex{SHASums: sums, SHASumsSignature: tc.plain, SHASumsSignatures: tc.listed}
			got, err := chooseSignature(idx, tc.keyring)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestFindBuild(t *testing.T) {
	idx := &VersionIndex{Builds: []IndexBuild{
		{OS: "linux", Arch: "amd64", Filename: "consul_1.16.1_linux_amd64.zip"},
		{OS: "linux", Arch: "arm64", Filename: "evil.zip"},
	}}
	if got, err := findBuild(idx, "consul", "1.16.1", "linux", "amd64"); err != nil || got != "consul_1.16.1_linux_amd64.zip" {
		t.Fatalf("amd64: %q %v", got, err)
	}
	if _, err := findBuild(idx, "consul", "1.16.1", "linux", "arm64"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("renamed archive: %v, want ErrInvalid", err)
	}
	if _, err := findBuild(idx, "consul", "1.16.1", "darwin", "arm64"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing platform: %v, want ErrNotFound", err)
	}
}
