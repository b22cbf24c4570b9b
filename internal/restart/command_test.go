package restart

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestCommand(t *testing.T) {
	tests := []struct {
		name       string
		argv       []string
		timeout    time.Duration
		wantErr    error
		wantCode   int
		wantOutput string
	}{
		{name: "ok", argv: []string{"/bin/sh", "-c", "echo restarted"}},
		{name: "missing argv", wantErr: ErrMissingCommand},
		{name: "fails with output", argv: []string{"/bin/sh", "-c", "echo 'unit consul not found' >&2; exit 5"},
			wantCode: 5, wantOutput: "unit consul not found"},
		{name: "not found", argv: []string{"/no/such/restart-tool"}, wantCode: -1, wantErr: os.ErrNotExist},
		{name: "deadline", argv: []string{"/bin/sh", "-c", "echo starting; sleep 60"}, timeout: time.Second,
			wantErr: context.DeadlineExceeded, wantCode: -1, wantOutput: "starting"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			start := time.Now()
			err := Command{Argv: tc.argv}.Restart(ctx)
			t.Logf("took %v: %v", time.Since(start), err)
			if tc.wantErr == nil && tc.wantOutput == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			var ce *CommandError
			if errors.As(err, &ce) {
				if ce.ExitCode != tc.wantCode {
					t.Errorf("exit code %d, want %d", ce.ExitCode, tc.wantCode)
				}
			} else if tc.wantCode != 0 {
				t.Fatalf("err %v is not a *CommandError", err)
			}
			if !strings.Contains(err.Error(), tc.wantOutput) {
				t.Errorf("error %q does not carry the output %q", err, tc.wantOutput)
			}
		})
	}
}

// TestCommandKillsItsGroup: when the deadline passes, a grandchild of the command is killed as well.
func TestCommandKillsItsGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "gc.pid")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := Command{Argv: []string{"/bin/sh", "-c", "sleep 60 & echo $! > " + pidFile + "; wait"}}.Restart(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	gc, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	waitFor(wctx, t, "the grandchild to die", func() bool { return !alive(gc) })
}

func TestTailBuffer(t *testing.T) {
	var b tailBuffer
	b.Write([]byte(strings.Repeat("a", maxOutput)))
	b.Write([]byte("tail"))
	if s := b.String(); len(s) != maxOutput || !strings.HasSuffix(s, "tail") {
		t.Errorf("len %d suffix %q", len(s), s[len(s)-4:])
	}
}

// fakeSystemctl writes a systemctl stand-in: `restart` exits with restartCode (printing a message),
// `is-active` prints the states listed in the states file one per call (the last one repeats).
func fakeSystemctl(t *testing.T, restartCode int, states ...string) (path, callLog string) {
	dir := t.TempDir()
	path = filepath.Join(dir, "systemctl")
	callLog = filepath.Join(dir, "calls")
	statesFile := filepath.Join(dir, "states")
	if err := os.WriteFile(statesFile, []byte(strings.Join(states, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `#!/bin/sh
echo "$*" >> ` + callLog + `
case "$1" in
restart)
	echo "Job for $2 failed because the control process exited with error code." >&2
	exit ` + strconv.Itoa(restartCode) + `
	;;
is-active)
	state=$(head -n 1 ` + statesFile + `)
	if [ "$(wc -l < ` + statesFile + `)" -gt 1 ]; then sed -i 1d ` + statesFile + `; fi
	echo "$state"
	[ "$state" = active ] || exit 3
	;;
esac
`
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, callLog
}

func TestSystemd(t *testing.T) {
	tests := []struct {
		name        string
		restartCode int
		states      []string
		unit        string
		wantErr     error
		wantText    string
	}{
		{name: "active at once", states: []string{"active"}},
		{name: "activating then active", states: []string{"activating", "activating", "active"}},
		{name: "restart fails", restartCode: 1, states: []string{"failed"}, wantText: "control process exited"},
		{name: "unit failed", states: []string{"activating", "failed"}, wantErr: ErrNotActive},
		{name: "never active", states: []string{"activating"}, wantErr: ErrNotActive},
		{name: "no unit", unit: "-", wantErr: ErrMissingCommand},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			systemctl, calls := fakeSystemctl(t, tc.restartCode, tc.states...)
			unit := "consul.service"
			if tc.unit == "-" {
				unit = ""
			}
			activeTimeout := 10 * time.Second // generous: the fake is a shell script on a busy machine
			if tc.name == "never active" {
				activeTimeout = 500 * time.Millisecond
			}
			s := Systemd{Unit: unit, Systemctl: systemctl, ActiveTimeout: activeTimeout,
				PollInterval: 20 * time.Millisecond, Logger: testLogger(t)}
			err := s.Restart(context.Background())
			log, _ := os.ReadFile(calls)
			t.Logf("err: %v; calls: %q", err, log)
			switch {
			case tc.wantErr == nil && tc.wantText == "":
				if err != nil {
					t.Fatal(err)
				}
				if !strings.HasPrefix(string(log), "restart consul.service\n") ||
					!strings.HasSuffix(string(log), "is-active consul.service\n") {
					t.Errorf("calls %q", log)
				}
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			case tc.wantText != "" && (err == nil || !strings.Contains(err.Error(), tc.wantText)):
				t.Fatalf("err = %v, want it to contain %q", err, tc.wantText)
			}
		})
	}
}
