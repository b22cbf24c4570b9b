package release

import (
	"bytes"
	_ "embed"
	"encoding/base64"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// hashicorpKey is HashiCorp's release signing key (HashiCorp Security, fingerprint
// C874 011F 0AB4 0511 0D02 1055 3436 5D94 72D7 468F), the refreshed block valid until 2030-03-01, copied from
// hashicorp/hc-install internal/pubkey/pubkey.go (DefaultPublicKey, second block, armor checksum =wtp+).
//
//go:embed hashicorp.asc
var hashicorpKey []byte

// HashiCorpFingerprint is the primary key fingerprint of the embedded HashiCorp release key.
const HashiCorpFingerprint = "C874011F0AB405110D02105534365D9472D7468F"

// KeyExpiryWarning is how long before a pinned key expires callers should start warning: long enough for a
// refreshed key to be rolled out through configuration before verification starts failing.
const KeyExpiryWarning = 90 * 24 * time.Hour

const (
	armorPublicBegin  = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
	armorPublicEnd    = "-----END PGP PUBLIC KEY BLOCK-----"
	armorPrivateBegin = "-----BEGIN PGP PRIVATE KEY BLOCK-----"
)

// DefaultKeyring returns the pinned HashiCorp release key embedded in the binary.
func DefaultKeyring() (openpgp.EntityList, error) {
	el, err := ReadKeyring(hashicorpKey)
	if err != nil {
		return nil, fmt.Errorf("failed to read the embedded HashiCorp key: %w", err)
	}
	return el, nil
}

// ReadKeyring reads every armored public key block in armored (a file may concatenate several, one per key).
// Text between blocks is ignored; private key blocks are refused. When the same key appears more than once
// (an old block and its refreshed copy), the copy with the newest primary self-signature is kept, so a stale
// block cannot shadow the refreshed one.
func ReadKeyring(armored []byte) (openpgp.EntityList, error) {
	if bytes.Contains(armored, []byte(armorPrivateBegin)) {
		return nil, fmt.Errorf("%w: keyring holds a private key block; pin public keys only", ErrInvalid)
	}
	var (
		out    openpgp.EntityList
		index  = map[string]int{}
		rest   = armored
		blocks int
	)
	for {
		start := bytes.Index(rest, []byte(armorPublicBegin))
		if start < 0 {
			break
		}
		end := bytes.Index(rest[start:], []byte(armorPublicEnd))
		if end < 0 {
			return nil, fmt.Errorf("%w: armored public key block %d has no END line", ErrInvalid, blocks+1)
		}
		end += start + len(armorPublicEnd)
		block := rest[start:end]
		rest = rest[end:]
		blocks++

		b, err := armor.Decode(bytes.NewReader(block))
		if err != nil {
			return nil, fmt.Errorf("%w: failed to decode armored key block %d: %w", ErrInvalid, blocks, err)
		}
		body, err := io.ReadAll(b.Body)
		if err != nil {
			return nil, fmt.Errorf("%w: failed to decode armored key block %d: %w", ErrInvalid, blocks, err)
		}
		if err := checkArmorCRC(block, body); err != nil {
			return nil, fmt.Errorf("%w: key block %d: %w", ErrInvalid, blocks, err)
		}
		el, err := openpgp.ReadKeyRing(bytes.NewReader(body))
		if err != nil {
			return nil, fmt.Errorf("%w: failed to read key block %d: %w", ErrInvalid, blocks, err)
		}
		for _, e := range el {
			if e.PrivateKey != nil {
				return nil, fmt.Errorf("%w: key block %d holds private key material; pin public keys only", ErrInvalid, blocks)
			}
			fp := Fingerprint(e)
			if i, ok := index[fp]; ok {
				if selfSigTime(e).After(selfSigTime(out[i])) {
					out[i] = e
				}
				continue
			}
			index[fp] = len(out)
			out = append(out, e)
		}
	}
	if blocks == 0 {
		return nil, fmt.Errorf("%w: no armored public key block found", ErrInvalid)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no usable public key found", ErrInvalid)
	}
	return out, nil
}

// checkArmorCRC verifies the optional "=XXXX" CRC-24 line of an armored block against the decoded body. The
// library ignores it (RFC 9580 made it optional), but a pinned key is copied by hand: a transcription error
// should fail loudly here rather than as a confusing verification failure later.
func checkArmorCRC(block, body []byte) error {
	lines := bytes.Split(bytes.TrimSpace(block), []byte("\n"))
	if len(lines) < 2 {
		return nil
	}
	last := bytes.TrimSpace(lines[len(lines)-2]) // the line before END
	if len(last) != 5 || last[0] != '=' {
		return nil // no checksum line
	}
	want, err := base64.StdEncoding.DecodeString(string(last[1:]))
	if err != nil || len(want) != 3 {
		return fmt.Errorf("malformed armor checksum line %q", last)
	}
	got := crc24(body)
	if uint32(want[0])<<16|uint32(want[1])<<8|uint32(want[2]) != got {
		return fmt.Errorf("armor checksum %s does not match the key data (corrupted copy?)", last)
	}
	return nil
}

// crc24 is the OpenPGP armor checksum (RFC 4880 section 6.1).
func crc24(b []byte) uint32 {
	const (
		init24 = 0xB704CE
		poly24 = 0x1864CFB
	)
	crc := uint32(init24)
	for _, c := range b {
		crc ^= uint32(c) << 16
		for i := 0; i < 8; i++ {
			crc <<= 1
			if crc&0x1000000 != 0 {
				crc ^= poly24
			}
		}
	}
	return crc & 0xFFFFFF
}

func selfSigTime(e *openpgp.Entity) time.Time {
	sig, _ := e.PrimarySelfSignature()
	if sig == nil {
		return time.Time{}
	}
	return sig.CreationTime
}

// Fingerprint returns the entity's primary key fingerprint in upper-case hex.
func Fingerprint(e *openpgp.Entity) string {
	return strings.ToUpper(fmt.Sprintf("%x", e.PrimaryKey.Fingerprint))
}

// ShortKeyID returns the last 8 hex digits (upper case) of the primary key ID: the suffix HashiCorp uses in
// signature file names (consul_1.16.1_SHA256SUMS.72D7468F.sig).
func ShortKeyID(e *openpgp.Entity) string {
	return fmt.Sprintf("%08X", uint32(e.PrimaryKey.KeyId))
}

// KeyExpiry describes when a pinned key stops being usable for verifying releases.
type KeyExpiry struct {
	Fingerprint string    // primary key fingerprint, upper-case hex
	KeyID       string    // primary key ID, 16 upper-case hex digits
	Identity    string    // primary user ID, for messages
	Created     time.Time // primary key creation time
	// Expires is when the key can no longer verify signatures: the earlier of the primary key's expiry and
	// the latest expiry among its signing-capable keys (primary or subkeys). Zero means never.
	Expires time.Time
}

// Expired reports whether the key has expired at now.
func (k KeyExpiry) Expired(now time.Time) bool {
	return !k.Expires.IsZero() && now.After(k.Expires)
}

// ExpiresWithin reports whether the key has expired or expires within d of now.
func (k KeyExpiry) ExpiresWithin(now time.Time, d time.Duration) bool {
	return !k.Expires.IsZero() && !now.Add(d).Before(k.Expires)
}

func (k KeyExpiry) String() string {
	exp := "never expires"
	if !k.Expires.IsZero() {
		exp = "expires " + k.Expires.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("%s (%s, %s)", k.Fingerprint, k.Identity, exp)
}

// KeyExpiries reports the expiry of every key in the keyring, in keyring order. Pure: no I/O.
func KeyExpiries(keys openpgp.EntityList) []KeyExpiry {
	out := make([]KeyExpiry, 0, len(keys))
	for _, e := range keys {
		out = append(out, keyExpiry(e))
	}
	return out
}

// ExpiringKeys returns the keys that have expired or expire within `within` of now (use KeyExpiryWarning),
// soonest first. Callers log a warning for each.
func ExpiringKeys(keys openpgp.EntityList, now time.Time, within time.Duration) []KeyExpiry {
	var out []KeyExpiry
	for _, k := range KeyExpiries(keys) {
		if k.ExpiresWithin(now, within) {
			out = append(out, k)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Expires.Before(out[j].Expires) })
	return out
}

func keyExpiry(e *openpgp.Entity) KeyExpiry {
	k := KeyExpiry{
		Fingerprint: Fingerprint(e),
		KeyID:       e.PrimaryKey.KeyIdString(),
		Created:     e.PrimaryKey.CreationTime,
	}
	sig, ident := e.PrimarySelfSignature()
	if ident != nil {
		k.Identity = ident.Name
	}
	if sig == nil {
		// No valid self-signature: unusable. Treat as expired at creation.
		k.Expires = e.PrimaryKey.CreationTime
		return k
	}
	primary := lifetimeEnd(e.PrimaryKey.CreationTime, sig.KeyLifetimeSecs)

	// The latest expiry among signing-capable keys; zero (never) wins.
	var signing time.Time
	haveSigning, never := false, false
	consider := func(t time.Time) {
		haveSigning = true
		if t.IsZero() {
			never = true
		} else if t.After(signing) {
			signing = t
		}
	}
	if sig.FlagsValid && sig.FlagSign {
		consider(primary)
	}
	for _, sk := range e.Subkeys {
		if sk.Sig == nil || !sk.Sig.FlagsValid || !sk.Sig.FlagSign || !sk.PublicKey.PubKeyAlgo.CanSign() {
			continue
		}
		consider(earliest(lifetimeEnd(sk.PublicKey.CreationTime, sk.Sig.KeyLifetimeSecs),
			lifetimeEnd(sk.Sig.CreationTime, sk.Sig.SigLifetimeSecs)))
	}
	switch {
	case !haveSigning:
		k.Expires = e.PrimaryKey.CreationTime // cannot sign at all
	case never:
		k.Expires = primary
	default:
		k.Expires = earliest(primary, signing)
	}
	return k
}

func lifetimeEnd(from time.Time, secs *uint32) time.Time {
	if secs == nil || *secs == 0 {
		return time.Time{}
	}
	return from.Add(time.Duration(*secs) * time.Second)
}

// earliest returns the earlier of two expiry times, where zero means never.
func earliest(a, b time.Time) time.Time {
	switch {
	case a.IsZero():
		return b
	case b.IsZero():
		return a
	case a.Before(b):
		return a
	default:
		return b
	}
}

// packetConfig is the verification config: the current time comes from the caller, everything else is the
// library's safe defaults (weak hashes and algorithms rejected).
func packetConfig(now func() time.Time) *packet.Config {
	return &packet.Config{Time: now}
}
