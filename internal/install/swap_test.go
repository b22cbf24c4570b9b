package install

import (
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
)

// processState returns the state letter of pid from /proc/<pid>/stat ("S", "R", "Z", ...), or "" when
// the process is gone.
func processState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// TestF12_SwapWhileRunning starts a long-running process from the live path (a copy of /bin/sleep), swaps a
// different binary in and rolls it back, all while the process runs: no "text file busy", the process
// keeps running, and the live path holds the expected bytes after each step.
func TestF12_SwapWhileRunning(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	live := filepath.Join(dir, "agent")
	copyFile(t, "/bin/sleep", live)
	oldSum, newSum := mustSha(t, live), mustSha(t, "/bin/true")

	cmd := exec.Command(live, "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	waitFor(ctx, t, "the live binary to run", func() bool {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		return exe == live
	})
	// The premise of F12: writing into the running binary in place is refused.
	if f, err := os.OpenFile(live, os.O_WRONLY, 0); err == nil {
		f.Close()
		t.Logf("note: this kernel let us open a running binary for writing")
	} else {
		t.Logf("opening the running live binary for writing: %v (ETXTBSY: %v)", err, errors.Is(err, syscall.ETXTBSY))
	}

	b := Binary{LivePath: live}
	staged, err := b.Stage("/bin/true", "2.0.0")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rollback, err := b.Swap(staged, "1.0.0")
	if err != nil {
		t.Fatalf("Swap while the live binary runs: %v", err)
	}
	t.Logf("swap took %v", time.Since(start))
	if rollback != filepath.Join(dir, ".agent.1.0.0.rollback") {
		t.Errorf("rollback = %s", rollback)
	}
	if st := processState(pid); st == "" || st == "Z" {
		t.Fatalf("process from the old binary stopped running after Swap (state %q)", st)
	}
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	t.Logf("after swap: /proc/%d/exe = %q", pid, exe)
	if got := mustSha(t, live); got != newSum {
		t.Fatalf("live path does not hold the new binary after Swap")
	}
	if got := mustSha(t, rollback); got != oldSum {
		t.Fatalf("rollback copy does not hold the old binary")
	}
	if _, err := os.Stat(staged); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("staged file still exists after Swap: %v", err)
	}
	if out, err := exec.Command(live).CombinedOutput(); err != nil {
		t.Fatalf("new live binary does not run: %v: %s", err, out)
	}

	// Swap again with the same (now consumed) staged path: fails and keeps the rollback copy.
	if _, err := b.Swap(staged, "1.0.0"); err == nil {
		t.Fatal("second Swap of a consumed staged file succeeded")
	}
	if got := mustSha(t, rollback); got != oldSum {
		t.Fatalf("a failed second Swap replaced the rollback copy")
	}

	if err := b.Rollback(rollback); err != nil {
		t.Fatalf("Rollback while the old process runs: %v", err)
	}
	if got := mustSha(t, live); got != oldSum {
		t.Fatalf("live path does not hold the old binary after Rollback")
	}
	if got := mustSha(t, rollback); got != oldSum {
		t.Fatalf("rollback copy changed by Rollback")
	}
	if st := processState(pid); st == "" || st == "Z" {
		t.Fatalf("process stopped running after Rollback (state %q)", st)
	}
	if err := b.Discard(rollback); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(rollback); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("rollback copy still exists after Discard: %v", err)
	}
	t.Logf("directory at the end: %v", listDir(t, dir))
}

// TestRollbackRestoresBytes swaps and rolls back with hard links and with the copy fallback, and checks
// the exact bytes and mode at each step.
func TestRollbackRestoresBytes(t *testing.T) {
	noLinks := func(oldname, newname string) error {
		return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: syscall.EPERM}
	}
	tests := []struct {
		name     string
		link     func(string, string) error
		liveMode fs.FileMode
		wantLink bool // rollback copy shares the live binary's inode
	}{
		{name: "hard link", liveMode: 0o755, wantLink: true},
		{name: "copy fallback", link: noLinks, liveMode: 0o755},
		{name: "copy fallback keeps mode", link: noLinks, liveMode: 0o750},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			live := filepath.Join(dir, "consul")
			oldBytes := []byte("#!/bin/sh\necho old\nexit 0\n#" + strings.Repeat("o", 70000))
			newBytes := []byte("#!/bin/sh\necho new\nexit 0\n#" + strings.Repeat("n", 90000))
			writeFile(t, live, oldBytes, tc.liveMode)
			src := filepath.Join(t.TempDir(), "release")
			writeFile(t, src, newBytes, 0o644)
			var liveIno uint64
			if fi, err := os.Stat(live); err == nil {
				liveIno = fi.Sys().(*syscall.Stat_t).Ino
			}

			b := Binary{LivePath: live, link: tc.link}
			staged, err := b.Stage(src, "1.16.1")
			if err != nil {
				t.Fatal(err)
			}
			rollback, err := b.Swap(staged, "1.16.0")
			if err != nil {
				t.Fatal(err)
			}
			rfi, err := os.Stat(rollback)
			if err != nil {
				t.Fatal(err)
			}
			if linked := rfi.Sys().(*syscall.Stat_t).Ino == liveIno; linked != tc.wantLink {
				t.Errorf("rollback shares the old inode = %v, want %v", linked, tc.wantLink)
			}
			if got, _ := os.ReadFile(live); string(got) != string(newBytes) {
				t.Fatal("live path does not hold the new bytes after Swap")
			}
			if err := b.Rollback(rollback); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(live)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(oldBytes) {
				t.Fatal("Rollback did not restore the old bytes exactly")
			}
			fi, err := os.Stat(live)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tc.liveMode {
				t.Errorf("live mode after Rollback = %v, want %v", fi.Mode().Perm(), tc.liveMode)
			}
			if out, err := exec.Command(live).Output(); err != nil || string(out) != "old\n" {
				t.Errorf("rolled-back binary runs: %q %v", out, err)
			}
			// The rollback copy stays until Discard, so a second Rollback works too.
			if err := b.Rollback(rollback); err != nil {
				t.Fatalf("second Rollback: %v", err)
			}
			if err := b.Discard(rollback); err != nil {
				t.Fatal(err)
			}
			for _, n := range listDir(t, dir) {
				if n != "consul" {
					t.Errorf("left in the directory: %s", n)
				}
			}
		})
	}
}

func TestSwapErrors(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, b Binary) (staged, from string)
		wantErr error
	}{
		{name: "staged in another directory", wantErr: ErrForeignFile,
			prepare: func(t *testing.T, b Binary) (string, string) {
				p := filepath.Join(t.TempDir(), ".consul.1.16.1.staged")
				writeFile(t, p, []byte("x"), 0o755)
				return p, "1.16.0"
			}},
		{name: "not a staged file", wantErr: ErrForeignFile,
			prepare: func(t *testing.T, b Binary) (string, string) {
				return b.RollbackPath("1.16.0"), "1.16.0"
			}},
		{name: "another binary's staged file", wantErr: ErrForeignFile,
			prepare: func(t *testing.T, b Binary) (string, string) {
				return filepath.Join(filepath.Dir(b.LivePath), ".nomad.1.6.0.staged"), "1.16.0"
			}},
		{name: "staged file missing", wantErr: fs.ErrNotExist,
			prepare: func(t *testing.T, b Binary) (string, string) { return b.StagedPath("1.16.1"), "1.16.0" }},
		{name: "bad from version", wantErr: ErrBadVersion,
			prepare: func(t *testing.T, b Binary) (string, string) { return b.StagedPath("1.16.1"), "a/b" }},
		{name: "no live binary", wantErr: ErrNoLiveBinary,
			prepare: func(t *testing.T, b Binary) (string, string) {
				if err := os.Remove(b.LivePath); err != nil {
					t.Fatal(err)
				}
				writeFile(t, b.StagedPath("1.16.1"), []byte("x"), 0o755)
				return b.StagedPath("1.16.1"), "1.16.0"
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			b := Binary{LivePath: filepath.Join(dir, "consul")}
			writeFile(t, b.LivePath, []byte("live"), 0o755)
			staged, from := tc.prepare(t, b)
			_, err := b.Swap(staged, from)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Swap err = %v, want %v", err, tc.wantErr)
			}
			t.Logf("error as expected: %v", err)
			if got, err := os.ReadFile(b.LivePath); err == nil && string(got) != "live" {
				t.Errorf("live binary changed by a failed Swap")
			}
			if _, err := os.Stat(b.RollbackPath(from)); err == nil {
				t.Errorf("a failed Swap created a rollback copy")
			}
		})
	}
}

func TestRollbackAndDiscardErrors(t *testing.T) {
	dir := t.TempDir()
	b := Binary{LivePath: filepath.Join(dir, "consul")}
	writeFile(t, b.LivePath, []byte("live"), 0o755)
	tests := []struct {
		name    string
		run     func() error
		wantErr error
	}{
		{"rollback of a staged file", func() error { return b.Rollback(b.StagedPath("1.0.0")) }, ErrForeignFile},
		{"rollback of a missing copy", func() error { return b.Rollback(b.RollbackPath("1.0.0")) }, fs.ErrNotExist},
		{"rollback of the live path", func() error { return b.Rollback(b.LivePath) }, ErrForeignFile},
		{"discard the live path", func() error { return b.Discard(b.LivePath) }, ErrForeignFile},
		{"discard a missing staged file", func() error { return b.Discard(b.StagedPath("1.0.0")) }, nil},
		{"empty live path", func() error { return Binary{}.Rollback("x") }, ErrNoLivePath},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if got, _ := os.ReadFile(b.LivePath); string(got) != "live" {
				t.Fatal("live binary changed")
			}
		})
	}
}

// TestSwapResumes covers a Swap that runs again after a crash: once after the rollback link was made but
// before the rename, and once when an older rollback copy of the same version is still there.
func TestSwapResumes(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, b Binary)
	}{
		{name: "crash after the rollback link", prepare: func(t *testing.T, b Binary) {
			if err := os.Link(b.LivePath, b.RollbackPath("1.16.0")); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "stale rollback copy", prepare: func(t *testing.T, b Binary) {
			writeFile(t, b.RollbackPath("1.16.0"), []byte("stale"), 0o755)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			b := Binary{LivePath: filepath.Join(dir, "consul")}
			writeFile(t, b.LivePath, []byte("old"), 0o755)
			writeFile(t, b.StagedPath("1.16.1"), []byte("new"), 0o755)
			tc.prepare(t, b)
			rollback, err := b.Swap(b.StagedPath("1.16.1"), "1.16.0")
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(b.LivePath); string(got) != "new" {
				t.Errorf("live = %q, want new", got)
			}
			if got, _ := os.ReadFile(rollback); string(got) != "old" {
				t.Errorf("rollback = %q, want old", got)
			}
			if names := listDir(t, dir); len(names) != 2 {
				t.Errorf("directory holds %v, want the live binary and the rollback copy", names)
			}
		})
	}
}
