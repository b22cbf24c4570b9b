package install

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"testing"
	"time"
)

func TestNamesVersion(t *testing.T) {
	tests := []struct {
		out, version string
		want         bool
	}{
		{"Consul v1.16.1\nRevision 5d5e3d9d\n", "1.16.1", true},
		{"Nomad v1.6.1\nBuildDate 2023-07-21T13:49:42Z\n", "1.6.1", true},
		{"1.16.1", "1.16.1", true},
		{"Consul v1.16.10\n", "1.16.1", false},
		{"Consul v1.16.1-rc1\n", "1.16.1", false},
		{"Consul v1.16.1-rc1\n", "1.16.1-rc1", true},
		{"Consul v21.16.1\n", "1.16.1", false},
		{"version (v1.16.1)", "1.16.1", true},
		{"", "1.16.1", false},
	}
	for _, tc := range tests {
		if got := NamesVersion(tc.out, tc.version); got != tc.want {
			t.Errorf("NamesVersion(%q, %q) = %v, want %v", tc.out, tc.version, got, tc.want)
		}
	}
}

func TestCheck(t *testing.T) {
	say := func(out string, err error) Prober {
		return func(context.Context, string) (string, error) { return out, err }
	}
	errBoom := errors.New("boom")
	tests := []struct {
		name    string
		mode    fs.FileMode // 0: no file
		probe   Prober
		version string
		wantErr error
	}{
		{name: "ok", mode: 0o755, probe: say("Consul v1.16.1\nRevision abc\n", nil), version: "1.16.1"},
		{name: "other version", mode: 0o755, probe: say("Consul v1.16.0\n", nil), version: "1.16.1",
			wantErr: ErrVersionMismatch},
		{name: "longer version", mode: 0o755, probe: say("Consul v1.16.10\n", nil), version: "1.16.1",
			wantErr: ErrVersionMismatch},
		{name: "probe fails", mode: 0o755, probe: say("", errBoom), version: "1.16.1", wantErr: errBoom},
		{name: "not executable", mode: 0o644, probe: say("Consul v1.16.1", nil), version: "1.16.1",
			wantErr: ErrNotExecutable},
		{name: "missing", probe: say("Consul v1.16.1", nil), version: "1.16.1", wantErr: fs.ErrNotExist},
		{name: "bad version", mode: 0o755, probe: say("Consul v1.16.1", nil), version: "", wantErr: ErrBadVersion},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), ".consul.1.16.1.staged")
			if tc.mode != 0 {
				writeFile(t, p, []byte("bin"), tc.mode)
			}
			err := Check(context.Background(), p, tc.version, tc.probe)
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("Check err = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				t.Logf("error as expected: %v", err)
			}
		})
	}
}

// TestVersionCommand runs real (shell script) binaries through the default prober.
func TestVersionCommand(t *testing.T) {
	tests := []struct {
		name    string
		script  string
		wantErr error
	}{
		{name: "names the version", script: "#!/bin/sh\n[ \"$1\" = version ] && echo 'Consul v1.16.1' && echo 'Revision x'\n"},
		{name: "names another version", script: "#!/bin/sh\necho 'Consul v1.16.0'\n", wantErr: ErrVersionMismatch},
		{name: "exits non-zero", script: "#!/bin/sh\necho 'broken' >&2\nexit 3\n"},
		{name: "hangs until the deadline", script: "#!/bin/sh\nexec sleep 60\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "consul")
			writeFile(t, p, []byte(tc.script), 0o755)
			timeout := 10 * time.Second
			if tc.name == "hangs until the deadline" {
				timeout = time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			start := time.Now()
			err := Check(ctx, p, "1.16.1", VersionCommand("version"))
			t.Logf("Check took %v: %v", time.Since(start), err)
			switch tc.name {
			case "names the version":
				if err != nil {
					t.Fatal(err)
				}
			case "exits non-zero", "hangs until the deadline":
				if err == nil || errors.Is(err, ErrVersionMismatch) {
					t.Fatalf("want a probe error, got %v", err)
				}
			default:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
			}
		})
	}
}
