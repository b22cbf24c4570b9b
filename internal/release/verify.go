package release

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// Verified is the outcome of a successful signature check.
type Verified struct {
	IssuerKeyID       string // key ID named by the signature (16 upper-case hex; may be a subkey)
	SignerFingerprint string // primary fingerprint of the pinned key that verified it
	SignerShortID     string // last 8 hex digits of the signer's primary key ID
}

// VerifySignature checks a detached OpenPGP signature (binary, or ASCII-armored) over signed with the pinned
// keyring at time now. file names the signature for error messages. Errors are *SignatureError values that
// unwrap to ErrUnknownKey, ErrKeyExpired, ErrKeyRevoked or ErrSignature.
func VerifySignature(keyring openpgp.EntityList, signed, sig []byte, file string, now func() time.Time) (Verified, error) {
	if now == nil {
		now = time.Now
	}
	fail := func(kind error, issuer string, err error) (Verified, error) {
		return Verified{}, &SignatureError{File: file, IssuerKeyID: issuer, Kind: kind, Err: err}
	}
	raw, err := dearmorSignature(sig)
	if err != nil {
		return fail(ErrSignature, "", err)
	}
	issuerID, issuer, err := readSignaturePacket(raw)
	if err != nil {
		return fail(ErrSignature, "", err)
	}
	if len(keyring) == 0 {
		return fail(ErrUnknownKey, issuer, errors.New("the keyring is empty"))
	}

	keys := keyring.KeysByIdUsage(issuerID, packet.KeyFlagSign)
	if len(keys) == 0 {
		return fail(ErrUnknownKey, issuer, nil)
	}
	// Report expiry ourselves, with the date: the library only says "key expired".
	at := now()
	for _, k := range keys {
		if exp, expired := keyExpiredAt(k, at); expired {
			return Verified{}, &SignatureError{File: file, IssuerKeyID: issuer, Kind: ErrKeyExpired, KeyExpired: exp}
		}
	}

	signer, err := openpgp.CheckDetachedSignature(keyring, bytes.NewReader(signed), bytes.NewReader(raw), packetConfig(now))
	switch {
	case err == nil:
	case errors.Is(err, pgperrors.ErrUnknownIssuer):
		return fail(ErrUnknownKey, issuer, nil)
	case errors.Is(err, pgperrors.ErrKeyExpired):
		return fail(ErrKeyExpired, issuer, nil)
	case errors.Is(err, pgperrors.ErrKeyRevoked):
		return fail(ErrKeyRevoked, issuer, nil)
	default:
		return fail(ErrSignature, issuer, err)
	}
	if signer == nil {
		return fail(ErrSignature, issuer, errors.New("no signer returned"))
	}
	return Verified{IssuerKeyID: issuer, SignerFingerprint: Fingerprint(signer), SignerShortID: ShortKeyID(signer)}, nil
}

// dearmorSignature returns the binary signature packets, decoding ASCII armor if present.
func dearmorSignature(sig []byte) ([]byte, error) {
	if len(sig) == 0 {
		return nil, errors.New("signature file is empty")
	}
	trimmed := bytes.TrimLeft(sig, " \t\r\n")
	if !bytes.HasPrefix(trimmed, []byte("-----BEGIN PGP SIGNATURE-----")) {
		return sig, nil
	}
	b, err := armor.Decode(bytes.NewReader(trimmed))
	if err != nil {
		return nil, fmt.Errorf("failed to decode armored signature: %w", err)
	}
	if b.Type != openpgp.SignatureType {
		return nil, fmt.Errorf("armored block is %q, not a signature", b.Type)
	}
	raw, err := io.ReadAll(io.LimitReader(b.Body, int64(len(sig))))
	if err != nil {
		return nil, fmt.Errorf("failed to decode armored signature: %w", err)
	}
	return raw, nil
}

// readSignaturePacket checks that raw holds exactly one binary-document signature packet and returns its
// issuer key ID.
func readSignaturePacket(raw []byte) (uint64, string, error) {
	pr := packet.NewReader(bytes.NewReader(raw))
	p, err := pr.Next()
	if err != nil {
		return 0, "", fmt.Errorf("failed to parse signature packet: %w", err)
	}
	sig, ok := p.(*packet.Signature)
	if !ok {
		return 0, "", fmt.Errorf("first packet is %T, not a signature", p)
	}
	if _, err := pr.Next(); err != io.EOF {
		return 0, "", errors.New("signature file holds more than one packet")
	}
	if sig.SigType != packet.SigTypeBinary {
		return 0, "", fmt.Errorf("signature type %#x is not a binary document signature", uint8(sig.SigType))
	}
	var id uint64
	switch {
	case sig.IssuerKeyId != nil:
		id = *sig.IssuerKeyId
	case len(sig.IssuerFingerprint) >= 8:
		for _, b := range sig.IssuerFingerprint[len(sig.IssuerFingerprint)-8:] {
			id = id<<8 | uint64(b)
		}
	default:
		return 0, "", errors.New("signature names no issuer")
	}
	return id, fmt.Sprintf("%016X", id), nil
}

// keyExpiredAt reports whether the signing key k (primary or subkey) or its primary key has expired at now.
func keyExpiredAt(k openpgp.Key, now time.Time) (time.Time, bool) {
	primarySig, _ := k.Entity.PrimarySelfSignature()
	if primarySig == nil {
		return time.Time{}, false // let the library reject it
	}
	if exp := lifetimeEnd(k.Entity.PrimaryKey.CreationTime, primarySig.KeyLifetimeSecs); !exp.IsZero() && now.After(exp) {
		return exp, true
	}
	if k.PublicKey != k.Entity.PrimaryKey && k.SelfSignature != nil {
		if exp := lifetimeEnd(k.PublicKey.CreationTime, k.SelfSignature.KeyLifetimeSecs); !exp.IsZero() && now.After(exp) {
			return exp, true
		}
	}
	return time.Time{}, false
}
