package release_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/upgrader-dev/upgrader/internal/mirror"
	"github.com/upgrader-dev/upgrader/internal/release"
)

// today is the date the project was written against; the embedded key must be valid then.
var today = time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)

func TestDefaultKeyring(t *testing.T) {
	el, err := release.DefaultKeyring()
	if err != nil {
		t.Fatal(err)
	}
	if len(el) != 1 {
		t.Fatalf("embedded keyring holds %d keys, want 1", len(el))
	}
	const want = "C874011F0AB405110D02105534365D9472D7468F"
	if fp := release.Fingerprint(el[0]); fp != want {
		t.Fatalf("fingerprint %s, want %s", fp, want)
	}
	if release.HashiCorpFingerprint != want {
		t.Fatalf("HashiCorpFingerprint = %s", release.HashiCorpFingerprint)
	}
	if got := release.ShortKeyID(el[0]); got != "72D7468F" {
		t.Fatalf("short key ID %s, want 72D7468F (the suffix on releases.hashicorp.com)", got)
	}
	exp := release.KeyExpiries(el)[0]
	t.Logf("embedded key: %s", exp)
	if exp.Expired(today) {
		t.Fatalf("embedded HashiCorp key is expired on %s: %s", today.Format(time.DateOnly), exp)
	}
	if exp.ExpiresWithin(today, release.KeyExpiryWarning) {
		t.Fatalf("embedded key expires within 90 days of %s: %s", today.Format(time.DateOnly), exp)
	}
	if exp.Expires.Year() != 2030 {
		t.Fatalf("embedded key expires %s, want the refreshed block valid until 2030", exp.Expires)
	}
	// The signing subkey HashiCorp uses must be present and usable today.
	signing, ok := el[0].SigningKey(today)
	if !ok {
		t.Fatal("no usable signing key in the embedded block today")
	}
	if got := signing.PublicKey.KeyIdString(); got != "C820C6D5CD27AB87" {
		t.Fatalf("signing subkey %s, want C820C6D5CD27AB87", got)
	}
	// The warning fires within 90 days of the 2030 expiry.
	warn := release.ExpiringKeys(el, exp.Expires.Add(-30*24*time.Hour), release.KeyExpiryWarning)
	if len(warn) != 1 {
		t.Fatalf("no expiry warning 30 days before expiry")
	}
	if got := release.ExpiringKeys(el, today, release.KeyExpiryWarning); len(got) != 0 {
		t.Fatalf("unexpected warning today: %v", got)
	}
}

func TestReadKeyringReadsEveryBlock(t *testing.T) {
	a := genKey(t, "a", today.Add(-time.Hour), 0)
	b := genKey(t, "b", today.Add(-time.Hour), 0)
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.asc")
	if err := mirror.WritePublicKey(path, a, b); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	hc, err := os.ReadFile("hashicorp.asc")
	if err != nil {
		t.Fatal(err)
	}
	// Comments between blocks, a third block from another file.
	file := append([]byte("# pinned keys\n"), raw...)
	file = append(file, []byte("\nsome comment\n")...)
	file = append(file, hc...)
	el, err := release.ReadKeyring(file)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range el {
		got = append(got, release.Fingerprint(e))
	}
	want := []string{release.Fingerprint(a), release.Fingerprint(b), release.HashiCorpFingerprint}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("read %v, want %v", got, want)
	}
	for _, e := range el {
		if e.PrivateKey != nil {
			t.Fatal("public keyring holds private key material")
		}
	}
}

func TestReadKeyringRejects(t *testing.T) {
	k := genKey(t, "p", today, 0)
	priv := filepath.Join(t.TempDir(), "priv.asc")
	if err := mirror.WritePrivateKey(priv, k); err != nil {
		t.Fatal(err)
	}
	privBytes, _ := os.ReadFile(priv)
	hc, _ := os.ReadFile("hashicorp.asc")
	corrupt := bytes.Replace(hc, []byte("=wtp+"), []byte("=AAAA"), 1)
	truncated := hc[:len(hc)-40]
	cases := map[string][]byte{
		"empty":           nil,
		"no block":        []byte("not a key"),
		"private key":     privBytes,
		"bad checksum":    corrupt,
		"no END line":     truncated,
		"garbage in body": []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----\n"),
	}
	for name, in := range cases {
		if _, err := release.ReadKeyring(in); !errors.Is(err, release.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

// A stale block of a key followed by its refreshed block (or the other way round) must verify with the
// refreshed self-signature: the 2026 HashiCorp situation, where the first published block had expired.
func TestReadKeyringPrefersRefreshedBlock(t *testing.T) {
	created := today.Add(-400 * 24 * time.Hour)
	k := genKey(t, "rotating", created, 365*24*time.Hour) // expired 35 days ago
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.asc")
	if err := mirror.WritePublicKey(stale, k); err != nil {
		t.Fatal(err)
	}
	if err := mirror.RefreshKey(k, today.Add(-40*24*time.Hour), 5*365*24*time.Hour); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(dir, "fresh.asc")
	if err := mirror.WritePublicKey(fresh, k); err != nil {
		t.Fatal(err)
	}
	s, _ := os.ReadFile(stale)
	f, _ := os.ReadFile(fresh)

	msg := []byte("payload\n")
	var sig bytes.Buffer
	if err := openpgp.DetachSign(&sig, k, bytes.NewReader(msg), &packet.Config{Time: func() time.Time { return today.Add(-time.Hour) }}); err != nil {
		t.Fatal(err)
	}
	now := func() time.Time { return today }
	for name, file := range map[string][]byte{"stale only": s, "stale then fresh": append(append([]byte{}, s...), f...), "fresh then stale": append(append([]byte{}, f...), s...)} {
		el, err := release.ReadKeyring(file)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(el) != 1 {
			t.Fatalf("%s: %d entities, want 1 (same key)", name, len(el))
		}
		_, err = release.VerifySignature(el, msg, sig.Bytes(), "test.sig", now)
		if name == "stale only" {
			if !errors.Is(err, release.ErrKeyExpired) {
				t.Fatalf("%s: err = %v, want ErrKeyExpired", name, err)
			}
			t.Logf("stale block: %v", err)
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

func TestKeyExpiries(t *testing.T) {
	never := genKey(t, "never", today.Add(-time.Hour), 0)
	soon := genKey(t, "soon", today.Add(-time.Hour), 30*24*time.Hour)
	later := genKey(t, "later", today.Add(-time.Hour), 365*24*time.Hour)
	gone := genKey(t, "gone", today.Add(-48*time.Hour), 24*time.Hour)
	el := openpgp.EntityList{never, soon, later, gone}
	exps := release.KeyExpiries(el)
	if !exps[0].Expires.IsZero() || exps[0].Expired(today) || exps[0].ExpiresWithin(today, 1000*24*time.Hour) {
		t.Fatalf("never-expiring key: %+v", exps[0])
	}
	if want := today.Add(-time.Hour + 30*24*time.Hour); !exps[1].Expires.Equal(want) {
		t.Fatalf("soon expires %s, want %s", exps[1].Expires, want)
	}
	if !exps[3].Expired(today) {
		t.Fatalf("gone should be expired: %+v", exps[3])
	}
	warn := release.ExpiringKeys(el, today, release.KeyExpiryWarning)
	if len(warn) != 2 || warn[0].Fingerprint != release.Fingerprint(gone) || warn[1].Fingerprint != release.Fingerprint(soon) {
		t.Fatalf("ExpiringKeys = %v, want gone then soon", warn)
	}
}

func genKey(t testing.TB, name string, created time.Time, lifetime time.Duration) *openpgp.Entity {
	t.Helper()
	k, err := mirror.GenerateKey(name, created, lifetime)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
