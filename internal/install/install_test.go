package install

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Environment of the helper process that TestF12_StageCrashMidCopy kills in the middle of a copy.
const (
	helperEnv     = "UPGRADER_INSTALL_HELPER"
	helperLiveEnv = "UPGRADER_INSTALL_LIVE"
	helperSrcEnv  = "UPGRADER_INSTALL_SRC"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "stage" {
		_, err := Binary{LivePath: os.Getenv(helperLiveEnv)}.Stage(os.Getenv(helperSrcEnv), "9.9.9")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

func writeFile(t *testing.T, path string, data []byte, mode fs.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dst, b, 0o755)
}

func mustSha(t *testing.T, path string) string {
	t.Helper()
	s, err := Sha256(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestStage(t *testing.T) {
	release := bytes.Repeat([]byte("new release "), 10000)
	tests := []struct {
		name    string
		live    func(dir string) string
		src     func(dir string) string
		version string
		wantErr error
	}{
		{name: "ok", version: "1.16.1"},
		{name: "prerelease version", version: "1.17.0-rc1+ent"},
		{name: "replaces an older staged copy", version: "1.16.1", src: func(dir string) string {
			writeFile(t, filepath.Join(dir, ".consul.1.16.1.staged"), []byte("old half"), 0o700)
			return filepath.Join(dir, "release")
		}},
		{name: "empty version", version: "", wantErr: ErrBadVersion},
		{name: "version with a slash", version: "../x", wantErr: ErrBadVersion},
		{name: "version dot dot", version: "..", wantErr: ErrBadVersion},
		{name: "version with a space", version: "1.0 x", wantErr: ErrBadVersion},
		{name: "empty live path", version: "1.16.1", live: func(string) string { return "" }, wantErr: ErrNoLivePath},
		{name: "missing source", version: "1.16.1", src: func(dir string) string { return filepath.Join(dir, "nope") },
			wantErr: fs.ErrNotExist},
		{name: "source is a directory", version: "1.16.1", src: func(dir string) string { return dir },
			wantErr: ErrNotExecutable},
		{name: "live directory missing", version: "1.16.1",
			live: func(dir string) string { return filepath.Join(dir, "nodir", "consul") }, wantErr: fs.ErrNotExist},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			live := filepath.Join(dir, "consul")
			writeFile(t, live, []byte("old"), 0o755)
			src := filepath.Join(dir, "release")
			writeFile(t, src, release, 0o644)
			if tc.live != nil {
				live = tc.live(dir)
			}
			if tc.src != nil {
				src = tc.src(dir)
			}
			staged, err := Binary{LivePath: live}.Stage(src, tc.version)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Stage err = %v, want %v", err, tc.wantErr)
				}
				t.Logf("error as expected: %v", err)
				for _, n := range listDir(t, dir) {
					if strings.HasSuffix(n, ".tmp") {
						t.Errorf("temporary file left behind: %s", n)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Stage: %v", err)
			}
			if want := filepath.Join(dir, ".consul."+tc.version+".staged"); staged != want {
				t.Errorf("staged = %s, want %s", staged, want)
			}
			got, err := os.ReadFile(staged)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, release) {
				t.Errorf("staged content differs from the release")
			}
			fi, err := os.Stat(staged)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o755 {
				t.Errorf("staged mode = %v, want 0755", fi.Mode().Perm())
			}
			if b, _ := os.ReadFile(live); string(b) != "old" {
				t.Errorf("live binary changed by Stage: %q", b)
			}
			for _, n := range listDir(t, dir) {
				if strings.HasSuffix(n, ".tmp") {
					t.Errorf("temporary file left behind: %s", n)
				}
			}
		})
	}
}

// TestF12_StageCrashMidCopy kills (SIGKILL) a process that is in the middle of Stage: the source is a FIFO
// fed half of the release, so the helper is blocked reading with a half-written temporary file. The live
// binary must be intact, no staged file may exist, Cleanup must remove the temporary file, and a new
// Stage must then succeed.
func TestF12_StageCrashMidCopy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	live := filepath.Join(dir, "consul")
	copyFile(t, "/bin/sleep", live)
	liveSum := mustSha(t, live)
	fifo := filepath.Join(t.TempDir(), "release.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=stage", helperLiveEnv+"="+live, helperSrcEnv+"="+fifo)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0) // blocks until the helper opens the FIFO
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	half := bytes.Repeat([]byte{0xAB}, 48<<10)
	if _, err := w.Write(half); err != nil {
		t.Fatal(err)
	}
	var tmp string
	waitFor(ctx, t, "a half-written temporary file", func() bool {
		for _, n := range listDir(t, dir) {
			if strings.HasPrefix(n, ".consul.9.9.9.") && strings.HasSuffix(n, ".tmp") {
				if fi, err := os.Stat(filepath.Join(dir, n)); err == nil && fi.Size() == int64(len(half)) {
					tmp = filepath.Join(dir, n)
					return true
				}
			}
		}
		return false
	})
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	killed = true
	t.Logf("helper ended: %v (stderr %q); left behind: %v", err, stderr.String(), listDir(t, dir))

	if fi, err := os.Stat(tmp); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("expected the half-written temporary file with mode 0700 to remain: %v %v", fi, err)
	}
	if got := mustSha(t, live); got != liveSum {
		t.Fatalf("live binary changed by a crashed Stage")
	}
	b := Binary{LivePath: live}
	if _, err := os.Stat(b.StagedPath("9.9.9")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("staged file exists after a crash mid-copy: %v", err)
	}
	// The live binary still runs.
	if out, err := exec.Command(live, "--version").CombinedOutput(); err != nil {
		t.Fatalf("live binary does not run after the crash: %v: %s", err, out)
	}

	removed, err := b.Cleanup()
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != tmp {
		t.Fatalf("Cleanup removed %v, want [%s]", removed, tmp)
	}
	staged, err := b.Stage("/bin/true", "9.9.9")
	if err != nil {
		t.Fatalf("Stage after Cleanup: %v", err)
	}
	if mustSha(t, staged) != mustSha(t, "/bin/true") {
		t.Fatal("staged copy differs from its source")
	}
}

func TestCleanup(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "consul")
	files := map[string]bool{ // name -> removed by Cleanup
		"consul":                         false,
		".consul.1.16.1.0a1b2c.tmp":      true,
		".consul.rollback.ffee.tmp":      true,
		".consul.1.16.1.staged":          false,
		".consul.1.16.0.rollback":        false,
		".nomad.1.6.0.0a1b2c.tmp":        false,
		".consulx.1.16.1.0a1b2c.tmp":     false,
		"consul.tmp":                     false,
		".consul.1.16.1.0a1b2c.tmp.keep": false,
	}
	for n := range files {
		writeFile(t, filepath.Join(dir, n), []byte(n), 0o700)
	}
	removed, err := Binary{LivePath: live}.Cleanup()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("removed %v", removed)
	for n, gone := range files {
		_, err := os.Stat(filepath.Join(dir, n))
		if exists := err == nil; exists == gone {
			t.Errorf("%s: exists=%v after Cleanup, want removed=%v", n, exists, gone)
		}
	}
	if len(removed) != 2 {
		t.Errorf("removed %d files, want 2", len(removed))
	}
}
