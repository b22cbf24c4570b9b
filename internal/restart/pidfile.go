package restart

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// writePIDFile records pid in path atomically (temporary file, fsync, rename, fsync of the directory),
// in the usual format: the decimal pid and a newline.
func writePIDFile(path string, pid int) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("failed to create PID file: %w", err)
	}
	tmp := f.Name()
	_, err = f.WriteString(strconv.Itoa(pid) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("failed to write PID file %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("failed to open %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("failed to fsync %s: %w", dir, err)
	}
	return nil
}

// readPIDFile returns the pid recorded in path (fs.ErrNotExist when there is none).
func readPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("failed to read PID file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("failed to parse PID file %s: %q", path, strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// removePIDFile removes path if it still names pid, so that a late cleanup never removes the record of a
// newer process.
func removePIDFile(path string, pid int) error {
	if path == "" {
		return nil
	}
	got, err := readPIDFile(path)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && got != pid) {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("failed to remove PID file: %w", err)
	}
	return nil
}

// removeAny removes path whatever it holds.
func removeAny(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("failed to remove PID file: %w", err)
	}
	return nil
}
