package restart

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// DefaultCommandTimeout bounds a restart command when the caller's context has no deadline. A service
// manager restart that takes longer than this is hung, not slow.
const DefaultCommandTimeout = 5 * time.Minute

// maxOutput is how much of a command's output (its tail) is kept for the error.
const maxOutput = 16 << 10

// Command restarts the agent by running an operator-supplied command, for example
// ["service", "consul", "restart"] or ["sv", "restart", "consul"].
type Command struct {
	// Argv is the command and its arguments.
	Argv []string
	// Env is the command's whole environment; nil gives it the upgrader's.
	Env []string
	// Dir is the working directory; empty means the upgrader's.
	Dir string
	// Timeout applies when ctx has no deadline; default DefaultCommandTimeout.
	Timeout time.Duration
}

// Restart runs the command in its own process group and returns a *CommandError (with the command's
// output) when it fails or ctx ends first; the whole group is killed then.
func (c Command) Restart(ctx context.Context) error {
	_, err := run(ctx, c.Argv, c.Env, c.Dir, c.Timeout)
	return err
}

// CommandError is a command that failed; callers read the exit code and output from it.
type CommandError struct {
	Argv []string
	// ExitCode is the exit status, -1 when the command did not exit on its own (signal, timeout) or did
	// not start.
	ExitCode int
	// Output is the tail of the combined stdout and stderr.
	Output string
	Err    error
}

var _ error = (*CommandError)(nil)

func (e *CommandError) Error() string {
	out := strings.TrimSpace(e.Output)
	if out == "" {
		out = "(no output)"
	}
	return fmt.Sprintf("failed to run %q: %v: %s", strings.Join(e.Argv, " "), e.Err, out)
}

func (e *CommandError) Unwrap() error { return e.Err }

// run runs argv with a deadline (ctx's, or timeout), in its own process group, and returns its output.
func run(ctx context.Context, argv, env []string, dir string, timeout time.Duration) (string, error) {
	if len(argv) == 0 || argv[0] == "" {
		return "", fmt.Errorf("failed to run a restart command: %w", ErrMissingCommand)
	}
	if _, ok := ctx.Deadline(); !ok {
		if timeout <= 0 {
			timeout = DefaultCommandTimeout
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var out tailBuffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Dir = dir
	cmd.Stdout = &out
	cmd.Stderr = &out
	setProcessGroup(cmd)
	cmd.Cancel = func() error { return signalGroup(cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = waitDelay
	err := cmd.Run()
	if err == nil {
		return out.String(), nil
	}
	ce := &CommandError{Argv: argv, ExitCode: -1, Output: out.String(), Err: err}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && exitErr.Exited() {
		ce.ExitCode = exitErr.ExitCode()
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		ce.Err = fmt.Errorf("%w (%v)", ctxErr, err)
	}
	return out.String(), ce
}

// tailBuffer keeps the last maxOutput bytes written to it.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if over := len(t.b) - maxOutput; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }
