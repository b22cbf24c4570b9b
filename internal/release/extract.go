package release

import (
	"archive/zip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/upgrader-dev/upgrader/internal/atomicfile"
)

// maxZipEntries bounds the central directory we are willing to walk (real archives hold one or two files).
const maxZipEntries = 64

// extractBinary extracts exactly one entry named name from the zip at zipPath into dest (atomically: temp
// file in dest's directory, fsync, chmod 0755, rename, fsync of the directory). The whole archive is
// rejected if any entry has an absolute or traversing name, is a symlink or other non-regular file, or if
// name appears more than once. At most limit bytes are written, counted as they are written, so a lying
// header cannot cause a zip bomb. Returns the binary's hex SHA-256.
func extractBinary(zipPath, name, dest string, limit int64) (string, error) {
	zr, err := zip.OpenReader(zipPath)
	if err != nil {
		return "", fmt.Errorf("%w: failed to open %s: %w", ErrArchive, filepath.Base(zipPath), err)
	}
	defer zr.Close()
	entry, err := pickEntry(zr.File, name, limit)
	if err != nil {
		return "", err
	}

	rc, err := entry.Open()
	if err != nil {
		return "", fmt.Errorf("%w: failed to open entry %q: %w", ErrArchive, entry.Name, err)
	}
	defer rc.Close()

	dir := filepath.Dir(dest)
	f, err := os.CreateTemp(dir, "."+filepath.Base(dest)+".*.tmp")
	if err != nil {
		return "", fmt.Errorf("failed to create a temp file in %s: %w", dir, err)
	}
	tmp := f.Name()
	fail := func(err error) (string, error) {
		f.Close()
		os.Remove(tmp)
		return "", err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(rc, limit+1))
	if err != nil {
		if errors.Is(err, zip.ErrChecksum) || errors.Is(err, zip.ErrFormat) || errors.Is(err, zip.ErrAlgorithm) {
			return fail(fmt.Errorf("%w: failed to extract %q: %w", ErrArchive, entry.Name, err))
		}
		return fail(fmt.Errorf("failed to extract %q: %w", entry.Name, err))
	}
	if n > limit {
		return fail(fmt.Errorf("%w: entry %q expands past %d bytes", ErrTooLarge, entry.Name, limit))
	}
	if n == 0 {
		return fail(fmt.Errorf("%w: entry %q is empty", ErrArchive, entry.Name))
	}
	if err := f.Sync(); err != nil {
		return fail(fmt.Errorf("failed to sync %s: %w", tmp, err))
	}
	if err := f.Chmod(0o755); err != nil {
		return fail(fmt.Errorf("failed to chmod %s: %w", tmp, err))
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("failed to close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, dest); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("failed to move the binary into %s: %w", dest, err)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// pickEntry validates every entry and returns the single regular file called name. Pure.
func pickEntry(files []*zip.File, name string, limit int64) (*zip.File, error) {
	if len(files) > maxZipEntries {
		return nil, fmt.Errorf("%w: %d entries, more than %d", ErrArchive, len(files), maxZipEntries)
	}
	var found *zip.File
	for _, f := range files {
		if err := checkEntryName(f.Name); err != nil {
			return nil, err
		}
		mode := f.Mode()
		if mode.IsDir() {
			continue
		}
		if !mode.IsRegular() {
			return nil, fmt.Errorf("%w: entry %q is not a regular file (mode %v)", ErrArchive, f.Name, mode)
		}
		if f.Name != name {
			continue
		}
		if found != nil {
			return nil, fmt.Errorf("%w: more than one entry named %q", ErrArchive, name)
		}
		found = f
	}
	if found == nil {
		return nil, fmt.Errorf("%w: no entry named %q", ErrArchive, name)
	}
	if found.UncompressedSize64 > uint64(limit) {
		return nil, fmt.Errorf("%w: entry %q is %d bytes, limit %d", ErrTooLarge, name, found.UncompressedSize64, limit)
	}
	return found, nil
}

// checkEntryName rejects absolute names, Windows drive or backslash names, traversal, and non-canonical paths.
func checkEntryName(name string) error {
	bad := func(why string) error {
		return fmt.Errorf("%w: entry %q: %s", ErrArchive, name, why)
	}
	switch {
	case name == "":
		return bad("empty name")
	case strings.HasPrefix(name, "/"):
		return bad("absolute path")
	case strings.ContainsAny(name, "\\\x00"):
		return bad("backslash or NUL in name")
	case len(name) >= 2 && name[1] == ':':
		return bad("drive letter")
	}
	trimmed := strings.TrimSuffix(name, "/") // directories end in "/"
	for _, part := range strings.Split(trimmed, "/") {
		if part == ".." {
			return bad("path traversal")
		}
	}
	if path.Clean(trimmed) != trimmed {
		return bad("non-canonical path")
	}
	return nil
}
