package release

import (
	"bytes"
	"fmt"
	"strings"
)

// maxSumsLines bounds the number of entries accepted in one SHA256SUMS file (real ones hold a few dozen).
const maxSumsLines = 10000

// ParseSHA256SUMS parses a SHA256SUMS file strictly: each line is exactly 64 hex digits, two spaces and a
// plain file name (no directories, no whitespace or control characters), lines end with "\n" (the last one
// may omit it), and no name appears twice. Hex digits are returned in lower case, keyed by file name.
// Only call it on content whose signature has already been verified.
func ParseSHA256SUMS(b []byte) (map[string]string, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: SHA256SUMS is empty", ErrChecksum)
	}
	body := b
	if body[len(body)-1] == '\n' {
		body = body[:len(body)-1]
	}
	lines := bytes.Split(body, []byte("\n"))
	if len(lines) > maxSumsLines {
		return nil, fmt.Errorf("%w: SHA256SUMS has %d lines, more than %d", ErrChecksum, len(lines), maxSumsLines)
	}
	out := make(map[string]string, len(lines))
	for i, line := range lines {
		sum, name, err := parseSumsLine(line)
		if err != nil {
			return nil, fmt.Errorf("%w: SHA256SUMS line %d: %w", ErrChecksum, i+1, err)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("%w: SHA256SUMS line %d: duplicate entry for %q", ErrChecksum, i+1, name)
		}
		out[name] = sum
	}
	return out, nil
}

func parseSumsLine(line []byte) (sum, name string, err error) {
	const hexLen = 64
	if len(line) < hexLen+3 {
		return "", "", fmt.Errorf("too short (want \"<64 hex digits>  <file name>\")")
	}
	for _, c := range line[:hexLen] {
		if !isHex(c) {
			return "", "", fmt.Errorf("checksum is not 64 hex digits")
		}
	}
	if line[hexLen] != ' ' || line[hexLen+1] != ' ' {
		return "", "", fmt.Errorf("checksum must be followed by exactly two spaces")
	}
	name = string(line[hexLen+2:])
	if err := checkFileName(name); err != nil {
		return "", "", err
	}
	return strings.ToLower(string(line[:hexLen])), name, nil
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

// checkFileName accepts a plain file name: printable ASCII without spaces, no path separators, not "." or
// "..". Release file names never need more, and anything else is a sign of tampering.
func checkFileName(name string) error {
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("invalid file name %q", name)
	}
	if len(name) > 255 {
		return fmt.Errorf("file name longer than 255 bytes")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || c == '/' || c == '\\' {
			return fmt.Errorf("invalid file name %q (only printable ASCII without spaces or slashes)", name)
		}
	}
	return nil
}
