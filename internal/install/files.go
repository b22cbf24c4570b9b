package install

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// tempAttempts bounds the retries when a random temporary name is already taken.
const tempAttempts = 8

// writeAtomic writes r to a new temporary file next to the live binary, fsyncs it, sets mode and renames
// it to dst, then fsyncs the directory. On failure the temporary file is removed (a crash leaves it for
// Cleanup).
func (b Binary) writeAtomic(r io.Reader, tag, dst string, mode fs.FileMode) (err error) {
	f, tmp, err := b.createTemp(tag)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = io.Copy(f, r); err != nil {
		return fmt.Errorf("failed to write %s: %w", tmp, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("failed to fsync %s: %w", tmp, err)
	}
	if err = f.Chmod(mode); err != nil {
		return fmt.Errorf("failed to chmod %s: %w", tmp, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("failed to close %s: %w", tmp, err)
	}
	if err = os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("failed to rename %s to %s: %w", tmp, dst, err)
	}
	return syncDir(b.dir())
}

// duplicate makes dst an exact copy of src, atomically: a hard link to src under a temporary name,
// renamed to dst. When hard links fail (a filesystem without them, protected_hardlinks) it falls back to
// a fsynced copy with src's permission bits.
//
// When dst already is src (the same inode) there is nothing to do: rename(2) between two links of one
// file succeeds without doing anything, which would leave the temporary link behind.
func (b Binary) duplicate(src, tag, dst string) error {
	if same, err := sameFile(src, dst); err != nil {
		return err
	} else if same {
		return syncDir(b.dir())
	}
	link := b.link
	if link == nil {
		link = os.Link
	}
	var linkErr error
	for range tempAttempts {
		tmp, err := b.tempName(tag)
		if err != nil {
			return err
		}
		linkErr = link(src, tmp)
		if errors.Is(linkErr, fs.ErrExist) {
			continue
		}
		if linkErr != nil {
			break
		}
		if err := os.Rename(tmp, dst); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("failed to rename %s to %s: %w", tmp, dst, err)
		}
		return syncDir(b.dir())
	}
	// Fall back to a copy.
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("failed to open %s after hard link failed (%v): %w", src, linkErr, err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return fmt.Errorf("failed to stat %s: %w", src, err)
	}
	return b.writeAtomic(in, tag, dst, fi.Mode().Perm())
}

func sameFile(a, b string) (bool, error) {
	fa, err := os.Stat(a)
	if err != nil {
		return false, fmt.Errorf("failed to stat %s: %w", a, err)
	}
	fb, err := os.Stat(b)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("failed to stat %s: %w", b, err)
	}
	return os.SameFile(fa, fb), nil
}

// createTemp creates .<base>.<tag>.<random>.tmp with O_EXCL and mode 0700.
func (b Binary) createTemp(tag string) (*os.File, string, error) {
	for range tempAttempts {
		name, err := b.tempName(tag)
		if err != nil {
			return nil, "", err
		}
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, stagingMode)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("failed to create temporary file: %w", err)
		}
		return f, name, nil
	}
	return nil, "", fmt.Errorf("failed to create temporary file for %s: names kept colliding", tag)
}

func (b Binary) tempName(tag string) (string, error) {
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("failed to read random bytes: %w", err)
	}
	return b.sibling(tag + "." + hex.EncodeToString(r[:]) + tmpSuffix), nil
}

// syncDir fsyncs a directory so that renames and removals in it survive a power loss.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("failed to open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("failed to fsync directory %s: %w", dir, err)
	}
	return nil
}
