package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The pause hook is TEST-ONLY. End-to-end tests kill the upgrader (SIGKILL) at each step of an upgrade
// (FAULTS F10, F14); some steps last microseconds, so the test asks the agent to wait there.
//
// It is off unless the upgrader's environment has UPGRADER_TEST_HOOKS=1 (or Options.TestHooks is set).
// When on, right after journaling a step (and writing its status record) the agent reads
// <state_dir>/test-pause-at; if a line of it names that step ("locked", "swapped", "confirming",
// "rolling-back"), optionally followed by a duration ("swapped 30s"), the agent waits that long
// (default 60s) or until its context ends, then carries on normally. The file is read anew at every
// step, so a test can point each node at another step while the rollout runs. With the hook off the file
// is never read; with it on and no file, nothing changes. Waiting is harmless in itself: the lock stays
// held and renewed, and the journal already says where the upgrade stands.

// TestHooksEnv is the environment variable that enables the test-only pause hook.
const TestHooksEnv = "UPGRADER_TEST_HOOKS"

// PauseFile is the name, inside the state directory, of the test-only pause hook's file.
const PauseFile = "test-pause-at"

// defaultPause is how long the hook waits when its file names no duration.
const defaultPause = 60 * time.Second

// pauseAt waits at step when the test hook asks for it; it returns ctx's error if ctx ended meanwhile.
func (a *Agent) pauseAt(ctx context.Context, step Step) error {
	if !a.hooks {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(a.o.StateDir, PauseFile))
	if err != nil {
		return nil
	}
	d, ok := pauseFor(string(b), step)
	if !ok {
		return nil
	}
	a.log.Warn("TEST HOOK: pausing", "step", step, "for", d)
	return a.sleep(ctx, d)
}

// pauseFor parses the hook file: one "<step> [duration]" per line. Pure.
func pauseFor(content string, step Step) (time.Duration, bool) {
	for _, line := range strings.Split(content, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || Step(f[0]) != step {
			continue
		}
		if len(f) > 1 {
			if d, err := time.ParseDuration(f[1]); err == nil && d > 0 {
				return d, true
			}
		}
		return defaultPause, true
	}
	return 0, false
}
