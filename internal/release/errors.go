package release

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Every error returned by this package wraps exactly one of these (or a context error), with
// context naming the product, version, URL or key involved, so callers can branch with errors.Is.
var (
	// ErrNotFound: the mirror has no such version (or no build for the requested platform).
	ErrNotFound = errors.New("release: not found")
	// ErrSignature: the detached signature over SHA256SUMS is malformed or does not verify.
	ErrSignature = errors.New("release: bad signature")
	// ErrUnknownKey: the signature was made by a key that is not in the pinned keyring.
	ErrUnknownKey = errors.New("release: signed by a key that is not pinned")
	// ErrKeyExpired: the signing key (or its signing subkey) in the pinned keyring has expired.
	ErrKeyExpired = errors.New("release: signing key expired")
	// ErrKeyRevoked: the signing key in the pinned keyring is revoked.
	ErrKeyRevoked = errors.New("release: signing key revoked")
	// ErrChecksum: SHA256SUMS is malformed, lacks the archive, or the archive's SHA-256 does not match.
	ErrChecksum = errors.New("release: checksum mismatch")
	// ErrArchive: the zip is malformed or hostile (traversal, links, duplicates, missing binary).
	ErrArchive = errors.New("release: unsafe or invalid archive")
	// ErrInsecureURL: a plain http:// URL was used without AllowInsecureHTTP.
	ErrInsecureURL = errors.New("release: insecure URL")
	// ErrTooLarge: a download or an archive entry exceeds its size limit.
	ErrTooLarge = errors.New("release: too large")
	// ErrInvalid: invalid input (configuration, product/version names, index documents).
	ErrInvalid = errors.New("release: invalid")
)

// SignatureError describes a failed signature verification: which file, which issuer key ID the signature
// names, and (for an expired key) when it expired. It unwraps to one of ErrSignature, ErrUnknownKey,
// ErrKeyExpired or ErrKeyRevoked.
type SignatureError struct {
	File        string    // signature file name, e.g. consul_1.16.1_SHA256SUMS.72D7468F.sig
	IssuerKeyID string    // 16 hex digits, upper case; empty when the signature names no issuer
	KeyExpired  time.Time // set for ErrKeyExpired
	Kind        error     // the sentinel
	Err         error     // the underlying library error, if any
}

var _ error = (*SignatureError)(nil)

func (e *SignatureError) Error() string {
	issuer := e.IssuerKeyID
	if issuer == "" {
		issuer = "unknown"
	}
	msg := fmt.Sprintf("signature %s (issuer key ID %s)", e.File, issuer)
	switch e.Kind {
	case ErrUnknownKey:
		msg += ": the signing key is not in the pinned keyring"
	case ErrKeyExpired:
		if !e.KeyExpired.IsZero() {
			msg += fmt.Sprintf(": the pinned signing key expired on %s", e.KeyExpired.UTC().Format(time.DateOnly))
		} else {
			msg += ": the pinned signing key has expired"
		}
		msg += " (refresh the pinned key or configure a newer one)"
	case ErrKeyRevoked:
		msg += ": the pinned signing key is revoked"
	default:
		msg += ": signature does not verify"
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns both the sentinel and the underlying error.
func (e *SignatureError) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}
