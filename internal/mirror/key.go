package mirror

import (
	"bytes"
	"crypto"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/upgrader-dev/upgrader/internal/atomicfile"
)

// GenerateKey creates a signing key named name, created at now, that expires after lifetime (0: never). It is
// an Ed25519 (EdDSA, v4) key: generation takes milliseconds where RSA takes seconds, gpg reads it, and the
// release verifier accepts it. The entity holds its private key; never commit it.
func GenerateKey(name string, now time.Time, lifetime time.Duration) (*openpgp.Entity, error) {
	if lifetime < 0 {
		return nil, fmt.Errorf("mirror: lifetime cannot be negative")
	}
	if lifetime > 0 && lifetime < time.Second {
		return nil, fmt.Errorf("mirror: lifetime must be at least a second")
	}
	secs := lifetime / time.Second
	if secs > 1<<32-1 {
		return nil, fmt.Errorf("mirror: lifetime too long")
	}
	cfg := &packet.Config{
		Algorithm:       packet.PubKeyAlgoEdDSA,
		Curve:           packet.Curve25519,
		Time:            func() time.Time { return now },
		KeyLifetimeSecs: uint32(secs),
	}
	e, err := openpgp.NewEntity(name, "upgrader test release key", "", cfg)
	if err != nil {
		return nil, fmt.Errorf("failed to generate key %q: %w", name, err)
	}
	return e, nil
}

// WritePublicKey writes the public part of each key to path, one armored block per key, atomically.
func WritePublicKey(path string, keys ...*openpgp.Entity) error {
	if len(keys) == 0 {
		return fmt.Errorf("mirror: no keys to write to %s", path)
	}
	var buf bytes.Buffer
	for _, k := range keys {
		w, err := armor.Encode(&buf, openpgp.PublicKeyType, nil)
		if err != nil {
			return fmt.Errorf("failed to armor public key: %w", err)
		}
		if err := k.Serialize(w); err != nil {
			return fmt.Errorf("failed to serialize public key: %w", err)
		}
		if err := w.Close(); err != nil {
			return fmt.Errorf("failed to armor public key: %w", err)
		}
		buf.WriteByte('\n')
	}
	return atomicfile.WriteBytes(path, buf.Bytes(), 0o644)
}

// WritePrivateKey writes key, private parts included and unencrypted, to path with mode 0600. For the
// development mirror's key directory only.
func WritePrivateKey(path string, key *openpgp.Entity) error {
	if key.PrivateKey == nil {
		return fmt.Errorf("mirror: key has no private part")
	}
	var buf bytes.Buffer
	w, err := armor.Encode(&buf, openpgp.PrivateKeyType, nil)
	if err != nil {
		return fmt.Errorf("failed to armor private key: %w", err)
	}
	if err := key.SerializePrivateWithoutSigning(w, nil); err != nil {
		return fmt.Errorf("failed to serialize private key: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("failed to armor private key: %w", err)
	}
	buf.WriteByte('\n')
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("failed to create %s: %w", filepath.Dir(path), err)
	}
	return atomicfile.WriteBytes(path, buf.Bytes(), 0o600)
}

// ReadPrivateKey reads a key written by WritePrivateKey.
func ReadPrivateKey(path string) (*openpgp.Entity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("failed to open %s: %w", path, err)
	}
	defer f.Close()
	el, err := openpgp.ReadArmoredKeyRing(f)
	if err != nil {
		return nil, fmt.Errorf("failed to read key %s: %w", path, err)
	}
	if len(el) != 1 || el[0].PrivateKey == nil {
		return nil, fmt.Errorf("mirror: %s must hold exactly one private key", path)
	}
	return el[0], nil
}

// RefreshKey adds a new self-signature to key's primary identity, made at now, that extends the key's life
// to lifetime after its creation (0: never expires): what HashiCorp did to its release key in 2026. A
// signature made earlier by the key still verifies with the refreshed copy. Only the primary identity's
// self-signature changes; subkey bindings are left as they are.
func RefreshKey(key *openpgp.Entity, now time.Time, lifetime time.Duration) error {
	if key.PrivateKey == nil {
		return fmt.Errorf("mirror: key has no private part")
	}
	old, ident := key.PrimarySelfSignature()
	if old == nil || ident == nil {
		return fmt.Errorf("mirror: key has no primary identity")
	}
	secs := uint32(lifetime / time.Second)
	isPrimary := true
	sig := &packet.Signature{
		Version:              key.PrimaryKey.Version,
		SigType:              packet.SigTypePositiveCert,
		PubKeyAlgo:           key.PrimaryKey.PubKeyAlgo,
		Hash:                 crypto.SHA256,
		CreationTime:         now,
		IssuerKeyId:          &key.PrimaryKey.KeyId,
		IssuerFingerprint:    key.PrimaryKey.Fingerprint,
		KeyLifetimeSecs:      &secs,
		FlagsValid:           true,
		FlagSign:             true,
		FlagCertify:          true,
		IsPrimaryId:          &isPrimary,
		PreferredHash:        old.PreferredHash,
		PreferredSymmetric:   old.PreferredSymmetric,
		PreferredCompression: old.PreferredCompression,
		SEIPDv1:              true,
	}
	cfg := &packet.Config{Time: func() time.Time { return now }}
	if err := sig.SignUserId(ident.UserId.Id, key.PrimaryKey, key.PrivateKey, cfg); err != nil {
		return fmt.Errorf("failed to refresh key self-signature: %w", err)
	}
	ident.SelfSignature = sig
	ident.Signatures = append(ident.Signatures, sig)
	return nil
}
