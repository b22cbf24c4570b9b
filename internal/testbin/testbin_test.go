package testbin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestDir(t *testing.T) {
	tests := []struct {
		name, env, xdg, home, want string
	}{
		{"override", "/x/testbin", "/xdg", "/home/u", "/x/testbin"},
		{"xdg", "", "/xdg", "/home/u", "/xdg/upgrader/testbin"},
		{"home", "", "", "/home/u", "/home/u/.cache/upgrader/testbin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(EnvDir, tt.env)
			t.Setenv("XDG_CACHE_HOME", tt.xdg)
			t.Setenv("HOME", tt.home)
			got, err := Dir()
			if err != nil || got != tt.want {
				t.Fatalf("Dir() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestPath(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(EnvDir, dir)
	mk := func(v string, mode os.FileMode) {
		p := filepath.Join(dir, "consul", v, "consul")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	mk("1.0.0", 0o755)
	mk("1.0.1", 0o644)
	if err := os.MkdirAll(filepath.Join(dir, "consul", "1.0.2", "consul"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		version string
		wantErr error
	}{
		{"1.0.0", nil},
		{"1.0.1", ErrNotBuilt}, // not executable
		{"1.0.2", ErrNotBuilt}, // a directory
		{"9.9.9", ErrNotBuilt}, // missing
	}
	for _, tt := range tests {
		got, err := Path(tt.version)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("Path(%s) error = %v, want %v", tt.version, err, tt.wantErr)
		}
		if err == nil && got != filepath.Join(dir, "consul", tt.version, "consul") {
			t.Errorf("Path(%s) = %s", tt.version, got)
		}
	}
}

func TestRepoRoot(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "scripts", "testbin.sh")); err != nil {
		t.Fatalf("RepoRoot() = %s without the build script: %v", root, err)
	}
}

func TestLockFileExcludes(t *testing.T) {
	p := filepath.Join(t.TempDir(), ".build.lock")
	unlock, err := lockFile(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := lockFile(ctx, p); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second lock while held = %v, want deadline exceeded", err)
	}
	// A waiter gets the lock once the holder lets go.
	var wg sync.WaitGroup
	got := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		u, err := lockFile(ctx, p)
		if err == nil {
			u()
		}
		got <- err
	}()
	unlock()
	wg.Wait()
	if err := <-got; err != nil {
		t.Fatalf("waiter did not get the lock: %v", err)
	}
}

// TestEnsureBuildFailure runs the real build script for a version it refuses: the whole path (lock,
// re-check, script, output streaming) without a multi-minute build.
func TestEnsureBuildFailure(t *testing.T) {
	t.Setenv(EnvDir, t.TempDir())
	var out bytes.Buffer
	_, err := Ensure(context.Background(), "0.0.1", &out)
	if !errors.Is(err, ErrBuild) {
		t.Fatalf("Ensure() = %v, want ErrBuild", err)
	}
	if !strings.Contains(out.String(), "not a supported test version") {
		t.Fatalf("script output not streamed: %q", out.String())
	}
}

func TestEnsureCached(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(EnvDir, dir)
	p := filepath.Join(dir, "consul", "1.2.3", "consul")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := Ensure(context.Background(), "1.2.3", nil)
	if err != nil || got != p {
		t.Fatalf("Ensure() = %q, %v; want %q", got, err, p)
	}
}

// skipRecorder is a testing.TB whose Skipf records instead of stopping the test.
type skipRecorder struct {
	*testing.T
	skipped string
}

func (s *skipRecorder) Skipf(format string, args ...any) { s.skipped = fmt.Sprintf(format, args...) }

func TestRequireSkipsWhenTheBuildFails(t *testing.T) {
	t.Setenv(EnvDir, t.TempDir())
	rec := &skipRecorder{T: t}
	if got := Require(rec, "0.0.1"); got != "" {
		t.Fatalf("Require() = %q, want empty", got)
	}
	if !strings.Contains(rec.skipped, "consul 0.0.1 is not built and building it failed") {
		t.Fatalf("skip message = %q", rec.skipped)
	}
}

func TestLineWriter(t *testing.T) {
	var lines []string
	w := &lineWriter{logf: func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) }, prefix: "p: "}
	fmt.Fprint(w, "one\ntw")
	fmt.Fprint(w, "o\nthree")
	w.Flush()
	if got := strings.Join(lines, "|"); got != "p: one|p: two|p: three" {
		t.Fatalf("lines = %q", got)
	}
}
