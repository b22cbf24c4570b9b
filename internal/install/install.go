// Package install owns the agent's binary on disk: it stages a verified release next to the live binary,
// swaps it in with one atomic rename (the live path always holds a complete binary, even while the old one
// runs), keeps the previous binary as a rollback copy until the caller discards it, and removes temporary
// files left behind by a crashed run.
//
// Every file this package creates lives in the live binary's directory, so every rename is atomic and
// never crosses a filesystem:
//
//	.<base>.<version>.<random>.tmp   a copy being written (removed by Cleanup after a crash)
//	.<base>.<version>.staged         a complete, fsynced, executable copy of a release (from Stage)
//	.<base>.<version>.rollback       the binary that was live before a Swap (until Discard)
//
// Nothing is ever written into the live file in place: a running binary cannot be opened for writing
// ("text file busy"), and a crash in the middle of such a write would leave a truncated binary behind.
package install

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Sentinel errors. Callers match them with errors.Is.
var (
	// ErrNoLivePath is returned when Binary.LivePath is empty.
	ErrNoLivePath = errors.New("install: live path is empty")
	// ErrBadVersion is returned for a version that cannot be part of a file name.
	ErrBadVersion = errors.New("install: invalid version")
	// ErrForeignFile is returned when a path handed to Swap, Rollback or Discard is not one of this
	// binary's staged or rollback files (another directory, another base name or another kind).
	ErrForeignFile = errors.New("install: not a file of this binary")
	// ErrNoLiveBinary is returned by Swap when there is no live binary to keep as the rollback copy.
	ErrNoLiveBinary = errors.New("install: no live binary")
	// ErrNotExecutable is returned by Check for a file that is not an executable regular file.
	ErrNotExecutable = errors.New("install: not an executable file")
	// ErrVersionMismatch is returned by Check when the binary does not report the expected version.
	ErrVersionMismatch = errors.New("install: binary reports another version")
)

const (
	stagedSuffix   = ".staged"
	rollbackSuffix = ".rollback"
	tmpSuffix      = ".tmp"

	// stagingMode is the mode of a copy while it is written: owner only, so nobody runs a half-written
	// binary.
	stagingMode fs.FileMode = 0o700
	// binaryMode is the mode of a complete staged binary.
	binaryMode fs.FileMode = 0o755
)

// Binary is one live binary on this node, for example /usr/local/bin/consul.
//
// The zero value of the unexported fields uses the real filesystem calls; tests may replace link to
// exercise the copy fallback.
type Binary struct {
	// LivePath is the path the agent is started from.
	LivePath string

	// link makes a hard link; nil means os.Link.
	link func(oldname, newname string) error
}

// StagedPath is where Stage puts version.
func (b Binary) StagedPath(version string) string {
	return b.sibling(version + stagedSuffix)
}

// RollbackPath is where Swap keeps the binary that was live before it, when that binary is version.
func (b Binary) RollbackPath(version string) string {
	return b.sibling(version + rollbackSuffix)
}

// Stage copies src (a verified release binary) next to the live binary as .<base>.<version>.staged and
// returns that path. The copy is written to a new temporary file (O_EXCL, mode 0700), fsynced, set to
// mode 0755 and only then renamed into place; the directory is fsynced after the rename. A crash at any
// point leaves either no staged file or a complete one, plus at most a temporary file that Cleanup
// removes. An existing staged file of the same version is replaced.
func (b Binary) Stage(src, version string) (string, error) {
	if err := b.validate(); err != nil {
		return "", err
	}
	if err := validVersion(version); err != nil {
		return "", err
	}
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("failed to open release binary: %w", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", fmt.Errorf("failed to stat release binary: %w", err)
	}
	if fi.IsDir() {
		return "", fmt.Errorf("failed to stage %s: %w", src, ErrNotExecutable)
	}
	staged := b.StagedPath(version)
	if fi.Mode().IsRegular() && fi.Mode().Perm() == binaryMode {
		// A verified release already sits complete, fsynced and executable in the release cache, which
		// only ever replaces files by rename: a hard link stages it without writing it again (117 MB of
		// fsynced writes per node saved); duplicate falls back to a fsynced copy across filesystems.
		if err := b.duplicate(src, version, staged); err != nil {
			return "", fmt.Errorf("failed to stage %s as %s: %w", src, staged, err)
		}
		return staged, nil
	}
	if err := b.writeAtomic(in, version, staged, binaryMode); err != nil {
		return "", fmt.Errorf("failed to stage %s as %s: %w", src, staged, err)
	}
	return staged, nil
}

// Swap makes staged (from Stage) the live binary and returns the path of the rollback copy, which holds
// the binary that was live before (version fromVersion). The previous binary is kept with a hard link
// (a copy, fsynced, when the filesystem refuses hard links), then staged is renamed over the live path
// and the directory is fsynced. The rename is atomic: the live path always names a complete binary, and
// a process running the old binary keeps running (its /proc/<pid>/exe then reads "<live> (deleted)").
//
// Swap trusts fromVersion to name the live binary: a caller resuming after a crash decides from its own
// journal (or by comparing Sha256 of the live and staged files) whether the swap already happened.
// Swap checks that staged exists before it touches anything, so calling it again after a completed swap
// (the staged file is gone) fails without replacing the rollback copy.
func (b Binary) Swap(staged, fromVersion string) (string, error) {
	if err := b.validate(); err != nil {
		return "", err
	}
	if err := validVersion(fromVersion); err != nil {
		return "", err
	}
	if err := b.own(staged, stagedSuffix); err != nil {
		return "", err
	}
	if _, err := os.Lstat(staged); err != nil {
		return "", fmt.Errorf("failed to find staged binary: %w", err)
	}
	if _, err := os.Stat(b.LivePath); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("failed to keep a rollback copy of %s: %w", b.LivePath, ErrNoLiveBinary)
		}
		return "", fmt.Errorf("failed to stat live binary: %w", err)
	}
	rollback := b.RollbackPath(fromVersion)
	if err := b.duplicate(b.LivePath, fromVersion, rollback); err != nil {
		return "", fmt.Errorf("failed to keep %s as %s: %w", b.LivePath, rollback, err)
	}
	if err := os.Rename(staged, b.LivePath); err != nil {
		return "", fmt.Errorf("failed to rename %s over %s: %w", staged, b.LivePath, err)
	}
	if err := syncDir(b.dir()); err != nil {
		return "", err
	}
	return rollback, nil
}

// Rollback puts the rollback copy (from Swap) back at the live path atomically: the rollback copy is
// hard-linked (or copied and fsynced) to a temporary name, which is renamed over the live path. The
// rollback copy itself stays until the caller calls Discard, so a crash during or after Rollback can
// always roll back again.
func (b Binary) Rollback(rollback string) error {
	if err := b.validate(); err != nil {
		return err
	}
	if err := b.own(rollback, rollbackSuffix); err != nil {
		return err
	}
	if _, err := os.Lstat(rollback); err != nil {
		return fmt.Errorf("failed to find rollback copy: %w", err)
	}
	if err := b.duplicate(rollback, "rollback", b.LivePath); err != nil {
		return fmt.Errorf("failed to restore %s from %s: %w", b.LivePath, rollback, err)
	}
	return nil
}

// Discard removes a staged or rollback file of this binary that is no longer needed. A file that is
// already gone is not an error.
func (b Binary) Discard(path string) error {
	if err := b.validate(); err != nil {
		return err
	}
	if b.own(path, stagedSuffix) != nil && b.own(path, rollbackSuffix) != nil {
		return fmt.Errorf("failed to discard %s: %w", path, ErrForeignFile)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("failed to discard %s: %w", path, err)
	}
	return syncDir(b.dir())
}

// Cleanup removes the temporary files (.<base>.*.tmp) that a crashed Stage, Swap or Rollback left in the
// live binary's directory, and returns their paths. Call it at start-up, before staging: it does not
// know about a copy that another process is writing at the same moment.
func (b Binary) Cleanup() ([]string, error) {
	if err := b.validate(); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(b.dir())
	if err != nil {
		return nil, fmt.Errorf("failed to list %s: %w", b.dir(), err)
	}
	prefix := "." + filepath.Base(b.LivePath) + "."
	var removed []string
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, prefix) || !strings.HasSuffix(name, tmpSuffix) || e.IsDir() {
			continue
		}
		p := filepath.Join(b.dir(), name)
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, fmt.Errorf("failed to remove stale temporary file: %w", err)
		}
		removed = append(removed, p)
	}
	if len(removed) > 0 {
		if err := syncDir(b.dir()); err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// Sha256 returns the lower-case hex SHA-256 of the file at path.
func Sha256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("failed to open %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("failed to read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (b Binary) validate() error {
	if b.LivePath == "" {
		return ErrNoLivePath
	}
	return nil
}

func (b Binary) dir() string { return filepath.Dir(b.LivePath) }

// sibling is .<base>.<suffix> in the live binary's directory.
func (b Binary) sibling(suffix string) string {
	return filepath.Join(b.dir(), "."+filepath.Base(b.LivePath)+"."+suffix)
}

// own checks that path is a file of this binary with the given kind suffix, in the live directory.
func (b Binary) own(path, suffix string) error {
	name := filepath.Base(path)
	prefix := "." + filepath.Base(b.LivePath) + "."
	if filepath.Clean(filepath.Dir(path)) != filepath.Clean(b.dir()) ||
		!strings.HasPrefix(name, prefix) || !strings.HasSuffix(name, suffix) ||
		len(name) <= len(prefix)+len(suffix) {
		return fmt.Errorf("failed to use %s as a %s file of %s: %w",
			path, strings.TrimPrefix(suffix, "."), b.LivePath, ErrForeignFile)
	}
	return nil
}

// validVersion accepts the characters release versions use (1.16.1, 1.17.0-rc1, 1.16.1+ent) and nothing
// that could leave the directory or hide the file kind.
func validVersion(v string) error {
	if v == "" || v == "." || v == ".." || len(v) > 128 {
		return fmt.Errorf("%w: %q", ErrBadVersion, v)
	}
	for _, r := range v {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case r == '.' || r == '-' || r == '+' || r == '_':
		default:
			return fmt.Errorf("%w: %q", ErrBadVersion, v)
		}
	}
	return nil
}
