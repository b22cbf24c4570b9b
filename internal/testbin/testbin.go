// Package testbin owns the real Consul binaries that integration tests run: where they are cached, and
// building a missing one (through scripts/testbin.sh) under a file lock so that test packages running in
// parallel never build the same version twice.
package testbin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EnvDir names the environment variable that overrides the cache directory.
const EnvDir = "UPGRADER_TESTBIN"

// EnvLocked tells scripts/testbin.sh that its caller already holds the build lock.
const EnvLocked = "UPGRADER_TESTBIN_LOCKED"

// Product is the only product built here for now.
const Product = "consul"

// buildScript is the repository-relative script that builds a version into Dir().
const buildScript = "scripts/testbin.sh"

// lockName is the build lock in the cache dir; scripts/testbin.sh takes the same one.
const lockName = ".build.lock"

// DefaultBuildTimeout bounds one build when the caller's context has no deadline: a cold build takes about
// seven minutes on two cores, so twenty minutes only trips on a build that is stuck.
const DefaultBuildTimeout = 20 * time.Minute

var (
	// ErrNotBuilt means the cached binary for a version does not exist (yet).
	ErrNotBuilt = errors.New("testbin: binary not built")
	// ErrNoRepo means no directory above the working directory holds go.mod and scripts/testbin.sh.
	ErrNoRepo = errors.New("testbin: repository root not found")
	// ErrBuild means scripts/testbin.sh failed.
	ErrBuild = errors.New("testbin: build failed")
)

// Dir returns the cache root: $UPGRADER_TESTBIN, else $XDG_CACHE_HOME/upgrader/testbin, else
// ~/.cache/upgrader/testbin. It is the same rule scripts/testbin.sh applies.
func Dir() (string, error) {
	if d := os.Getenv(EnvDir); d != "" {
		return d, nil
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "upgrader", "testbin"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("failed to find the home directory for the testbin cache: %w", err)
	}
	return filepath.Join(home, ".cache", "upgrader", "testbin"), nil
}

// Path returns the cached consul binary for version, or an error wrapping ErrNotBuilt when it is missing.
func Path(version string) (string, error) {
	dir, err := Dir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, Product, version, Product)
	st, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("%w: consul %s (expected at %s; run %s %s)", ErrNotBuilt, version, p, buildScript, version)
		}
		return "", fmt.Errorf("failed to stat consul %s at %s: %w", version, p, err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%w: consul %s at %s is not an executable file", ErrNotBuilt, version, p)
	}
	return p, nil
}

// RepoRoot walks up from the working directory to the first directory that holds go.mod and the build
// script (tests run in their package directory, so this finds the module root).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("failed to get the working directory: %w", err)
	}
	for {
		if isFile(filepath.Join(dir, "go.mod")) && isFile(filepath.Join(dir, buildScript)) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("%w above the working directory", ErrNoRepo)
		}
		dir = parent
	}
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// Ensure returns the cached binary for version, building it first when it is missing. The build holds an
// exclusive lock on a file in the cache directory (waiting for it honours ctx), re-checks the cache once it
// holds the lock, and streams the script's output to out. Without a deadline on ctx, DefaultBuildTimeout
// applies.
func Ensure(ctx context.Context, version string, out io.Writer) (string, error) {
	if p, err := Path(version); err == nil {
		return p, nil
	} else if !errors.Is(err, ErrNotBuilt) {
		return "", err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultBuildTimeout)
		defer cancel()
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	dir, err := Dir()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("failed to create the testbin cache %s: %w", dir, err)
	}
	unlock, err := lockFile(ctx, filepath.Join(dir, lockName))
	if err != nil {
		return "", err
	}
	defer unlock()
	// Another process may have built it while this one waited for the lock.
	if p, err := Path(version); err == nil {
		return p, nil
	}
	if err := runBuild(ctx, root, dir, version, out); err != nil {
		return "", err
	}
	return Path(version)
}

func runBuild(ctx context.Context, root, dir, version string, out io.Writer) error {
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, buildScript), version)
	cmd.Dir = root
	// The script takes the same lock itself unless told that its caller holds it.
	cmd.Env = append(os.Environ(), EnvDir+"="+dir, EnvLocked+"=1")
	cmd.Stdout = out
	cmd.Stderr = out
	// The build runs `go` children: put them in their own group and kill the whole group on cancel.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%w: %s %s: %w", ErrBuild, buildScript, version, err)
	}
	return nil
}

// Require returns the cached consul binary for version, building it when it is missing (the build output
// goes to t.Log). It skips the test with a clear message only when the binary cannot be built; any other
// problem (a cache path that cannot be read) fails the test.
func Require(t testing.TB, version string) string {
	t.Helper()
	p, err := Path(version)
	if err == nil {
		return p
	}
	if !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("testbin: %v", err)
		return ""
	}
	ctx := context.Background()
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok {
			var cancel context.CancelFunc
			// Leave a little time for the test to report the skip before the binary's own timeout.
			ctx, cancel = context.WithDeadline(ctx, dl.Add(-15*time.Second))
			defer cancel()
		}
	}
	t.Logf("testbin: consul %s is not cached; building it with %s (this takes minutes)", version, buildScript)
	start := time.Now()
	w := &lineWriter{logf: t.Logf, prefix: "testbin: "}
	p, err = Ensure(ctx, version, w)
	w.Flush()
	if err != nil {
		t.Skipf("testbin: SKIP: consul %s is not built and building it failed: %v (build it by hand with `%s %s`)",
			version, err, buildScript, version)
		return ""
	}
	t.Logf("testbin: consul %s ready at %s after %s", version, p, time.Since(start).Round(time.Second))
	return p
}

// lineWriter turns a byte stream into one Logf call per line. It is safe for concurrent writers (exec may
// copy stdout and stderr from two goroutines).
type lineWriter struct {
	mu     sync.Mutex
	logf   func(format string, args ...any)
	prefix string
	buf    []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			break
		}
		w.logf("%s%s", w.prefix, w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// Flush logs a trailing partial line.
func (w *lineWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.logf("%s%s", w.prefix, w.buf)
		w.buf = nil
	}
}
