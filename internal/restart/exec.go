package restart

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

const (
	// DefaultKillTimeout is how long Stop waits after the graceful signal before SIGKILL. Consul's own
	// graceful leave is bounded well below it (a server transfers leadership and leaves in seconds), so
	// 30 s only trips on an agent that hangs.
	DefaultKillTimeout = 30 * time.Second
	// DefaultPollInterval is how often an adopted process (not our child, so it cannot be waited for) is
	// checked for liveness.
	DefaultPollInterval = 200 * time.Millisecond
	// killWait bounds the wait after SIGKILL: the kernel ends a killed process promptly, so a process
	// still there after this long is stuck in the kernel (uninterruptible I/O) and reported.
	killWait = 10 * time.Second
	// groupPoll is how often the process group is scanned while waiting for it to empty.
	groupPoll = 25 * time.Millisecond
	// waitDelay bounds how long cmd.Wait waits for output pipes after the process exits (a grandchild
	// that inherited them can hold them open).
	waitDelay = time.Second
)

// ExecInput configures an Exec. Only Path is required.
type ExecInput struct {
	// Path is the agent binary. Every start execs whatever file is at Path at that moment, so a Restart
	// after install.Binary.Swap runs the new binary. A bare name is looked up in PATH once, by New.
	Path string
	// Args are the arguments after the binary, for example ["agent", "-config-dir", "/etc/consul.d"].
	Args []string
	// Env is the child's whole environment; nil gives it the upgrader's environment.
	Env []string
	// Dir is the child's working directory; empty means the upgrader's.
	Dir string
	// Stdout and Stderr receive the child's output; nil discards it. Pass *os.File values (a log file):
	// the child then writes to the file directly and keeps running if the upgrader dies. Any other
	// io.Writer is fed through a pipe owned by the upgrader, and a child writing to that pipe after the
	// upgrader died is killed by SIGPIPE, which defeats the crash safety described on Exec. An adopted
	// process keeps the output it was started with.
	Stdout, Stderr io.Writer
	// KillSignal is the graceful stop signal sent to the process group; default SIGTERM.
	KillSignal syscall.Signal
	// KillTimeout bounds the graceful part of Stop; default DefaultKillTimeout.
	KillTimeout time.Duration
	// PIDFile, in the upgrader's state directory, records the running child so that a restarted
	// upgrader adopts it instead of starting a second copy. Empty disables adoption.
	PIDFile string
	// AutoRestart, when set, restarts the child after an unexpected exit, with backoff. Off (nil) by
	// default: see Exec.
	AutoRestart *Backoff
	// PollInterval is how often an adopted process is checked; default DefaultPollInterval.
	PollInterval time.Duration
	// Logger receives lifecycle events; it is Named("exec").
	Logger hclog.Logger
}

// Exit describes how a supervised process ended.
type Exit struct {
	Pid int
	// Code is the exit status, or -1 when the process was killed by a signal or its status is unknown
	// (an adopted process is not our child, so its status cannot be read).
	Code int
	// Signal is the signal that ended the process, 0 if none or unknown.
	Signal syscall.Signal
	// Requested is true when the exit followed Stop, Kill or Restart; false for a crash (or a signal
	// from someone else).
	Requested bool
	// Adopted is true for a process that a previous upgrader started.
	Adopted bool
	// Err is the error from waiting, if any.
	Err error
}

// Exec supervises the agent as a child process, in the shape of consul-template's child package: New
// takes an input struct; Start, Stop (graceful signal to the process group, bounded wait, then
// SIGKILL), Kill (SIGKILL now: consul-template's StopImmediately), Signal, Restart; and a per-start exit
// channel.
//
// Crash safety: the child leads its own process group and has no parent-death signal, so a SIGKILL of
// the upgrader leaves the agent running. That is deliberate: an upgrader crash must not take a node
// down. The child's pid is kept in PIDFile; a new Exec with the same PIDFile adopts the still-running
// agent on Start, Stop, Kill or Restart (after checking that the pid is alive, leads its own process
// group and runs Path, or Path's rollback copy, where /proc/<pid>/exe may read "<path> (deleted)"
// after a swap) instead of starting a second copy. An adopted process is not our child: it is watched
// by polling, and its exit status is unknown. A process started in the instant between fork and the PID
// file write is not recorded; that window is microseconds wide.
//
// Likewise, an upgrader that exits without calling Stop leaves the agent running for the next one to
// adopt; Close ends supervision without touching the agent.
//
// Unexpected exits are reported on ExitCh for the caller to decide. AutoRestart is off by default
// because, during an upgrade, a freshly swapped binary that keeps crashing is a failed gate that must
// lead to a rollback (FAULTS F3), not something to retry quietly; the demo and dev modes turn it on.
//
// All methods are safe for concurrent use. Start, Stop, Kill, Restart, Close and auto-restarts are
// serialized.
type Exec struct {
	path        string
	args, env   []string
	dir         string
	stdout      io.Writer
	stderr      io.Writer
	killSignal  syscall.Signal
	killTimeout time.Duration
	pidFile     string
	policy      *Backoff
	poll        time.Duration
	logger      hclog.Logger
	now         func() time.Time

	// op serializes lifecycle operations; it is held across their waits.
	op sync.Mutex

	// mu guards the fields below; it is never held across a wait.
	mu       sync.Mutex
	cur      *process
	closed   bool
	closeCh  chan struct{}
	pending  chan struct{} // closed to cancel a scheduled auto-restart
	attempts int           // consecutive auto-restarts, for the backoff
}

// process is one started or adopted child.
type process struct {
	pid        int
	adopted    bool
	started    time.Time
	startTicks uint64 // adopted only: tells a reused pid apart
	exitCh     chan Exit
	done       chan struct{} // closed when the process has ended; exit is then set
	exit       Exit
	requested  atomic.Bool
	finishOnce sync.Once
}

func (p *process) ended() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// New validates in and returns an Exec that has not started anything.
func New(in ExecInput) (*Exec, error) {
	if in.Path == "" {
		return nil, fmt.Errorf("failed to create exec restarter: %w", ErrMissingCommand)
	}
	path := in.Path
	if filepath.Base(path) == path {
		p, err := exec.LookPath(path)
		if err != nil {
			return nil, fmt.Errorf("failed to find %s: %w", path, err)
		}
		path = p
	}
	path, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("failed to make %s absolute: %w", in.Path, err)
	}
	pidFile := in.PIDFile
	if pidFile != "" {
		if pidFile, err = filepath.Abs(pidFile); err != nil {
			return nil, fmt.Errorf("failed to make %s absolute: %w", in.PIDFile, err)
		}
	}
	if in.AutoRestart != nil {
		b := in.AutoRestart.withDefaults()
		in.AutoRestart = &b
	}
	logger := in.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	e := &Exec{
		path:        path,
		args:        in.Args,
		env:         in.Env,
		dir:         in.Dir,
		stdout:      in.Stdout,
		stderr:      in.Stderr,
		killSignal:  in.KillSignal,
		killTimeout: in.KillTimeout,
		pidFile:     pidFile,
		policy:      in.AutoRestart,
		poll:        in.PollInterval,
		logger:      logger.Named("exec"),
		now:         time.Now,
		closeCh:     make(chan struct{}),
	}
	if e.killSignal == 0 {
		e.killSignal = syscall.SIGTERM
	}
	if e.killTimeout <= 0 {
		e.killTimeout = DefaultKillTimeout
	}
	if e.poll <= 0 {
		e.poll = DefaultPollInterval
	}
	return e, nil
}

// Start adopts the process recorded in the PID file if it is still running (see Exec), or else execs
// Path. It returns ErrRunning if a process is already running. ctx bounds the start-up only: the agent's
// lifetime is never tied to it.
func (e *Exec) Start(ctx context.Context) error {
	e.op.Lock()
	defer e.op.Unlock()
	if err := e.usable(); err != nil {
		return err
	}
	if p := e.current(); p != nil {
		if !p.ended() {
			return fmt.Errorf("failed to start %s: %w (pid %d)", e.path, ErrRunning, p.pid)
		}
		// The last process crashed: end whatever it left running in its group before starting again.
		if err := e.stop(ctx, p, e.killSignal); err != nil {
			return fmt.Errorf("failed to clean up after pid %d: %w", p.pid, err)
		}
	}
	e.cancelPending()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("failed to start %s: %w", e.path, err)
	}
	if p, err := e.adopt(); err != nil || p != nil {
		return err
	}
	return e.spawn()
}

// Stop sends KillSignal to the process group and waits until the process and every member of its group
// are gone, for at most KillTimeout or until ctx ends, whichever comes first; then it sends SIGKILL to
// the group and waits (bounded) again. It returns nil once everything is gone, ErrNotStopped otherwise.
// With nothing running it returns nil. A scheduled auto-restart is cancelled.
func (e *Exec) Stop(ctx context.Context) error {
	e.op.Lock()
	defer e.op.Unlock()
	if err := e.usable(); err != nil {
		return err
	}
	e.cancelPending()
	p, err := e.target()
	if err != nil || p == nil {
		return err
	}
	return e.stop(ctx, p, e.killSignal)
}

// Kill sends SIGKILL to the process group at once and waits (bounded) until it is gone.
func (e *Exec) Kill() error {
	e.op.Lock()
	defer e.op.Unlock()
	if err := e.usable(); err != nil {
		return err
	}
	e.cancelPending()
	p, err := e.target()
	if err != nil || p == nil {
		return err
	}
	return e.stop(context.Background(), p, syscall.SIGKILL)
}

// Restart stops the running process (adopting it from the PID file first if needed) and then execs
// whatever binary is at Path now. The start is not skipped when ctx ends during the stop: a cancelled
// Restart never leaves the node without its agent.
func (e *Exec) Restart(ctx context.Context) error {
	e.op.Lock()
	defer e.op.Unlock()
	if err := e.usable(); err != nil {
		return err
	}
	e.cancelPending()
	p, err := e.target()
	if err != nil {
		return err
	}
	if p != nil {
		if err := e.stop(ctx, p, e.killSignal); err != nil {
			return fmt.Errorf("failed to restart %s: %w", e.path, err)
		}
	}
	return e.spawn()
}

// Signal sends sig to the running process's group.
func (e *Exec) Signal(sig syscall.Signal) error {
	p := e.current()
	if p == nil || p.ended() {
		return nil
	}
	if err := signalGroup(p.pid, sig); err != nil {
		return fmt.Errorf("failed to send %v to process group %d: %w", sig, p.pid, err)
	}
	return nil
}

// Pid returns the pid of the running (started or adopted) process, or 0.
func (e *Exec) Pid() int {
	p := e.current()
	if p == nil || p.ended() {
		return 0
	}
	return p.pid
}

// Adopted reports whether the running process was adopted from the PID file.
func (e *Exec) Adopted() bool {
	p := e.current()
	return p != nil && !p.ended() && p.adopted
}

// ExitCh returns the exit channel of the current process: it receives exactly one Exit when that
// process ends (buffered, so the value waits for a reader; the channel is never closed). It is a new
// channel per start (and per auto-restart); callers must not cache it. It is nil when no process was
// started or adopted, and after Stop, Kill or Restart forgot the stopped one.
func (e *Exec) ExitCh() <-chan Exit {
	p := e.current()
	if p == nil {
		return nil
	}
	return p.exitCh
}

// LastExit returns how the current process ended, without consuming ExitCh; ok is false while it runs
// or when there is none.
func (e *Exec) LastExit() (ex Exit, ok bool) {
	p := e.current()
	if p == nil || !p.ended() {
		return Exit{}, false
	}
	return p.exit, true
}

// Close ends supervision without touching the agent: a scheduled auto-restart is cancelled and polling
// of an adopted process stops. The agent keeps running and stays recorded in the PID file for the next
// upgrader to adopt. The goroutine reaping a process we started keeps waiting until that process exits
// (only the parent can reap it). Later calls return ErrClosed.
func (e *Exec) Close() {
	e.op.Lock()
	defer e.op.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	e.closed = true
	close(e.closeCh)
	if e.pending != nil {
		close(e.pending)
		e.pending = nil
	}
}

func (e *Exec) usable() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	return nil
}

func (e *Exec) current() *process {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cur
}

// cancelPending cancels a scheduled auto-restart and resets the backoff: every lifecycle call the caller
// makes starts the crash count over.
func (e *Exec) cancelPending() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.attempts = 0
	if e.pending != nil {
		close(e.pending)
		e.pending = nil
	}
}

// target is the process that Stop, Kill and Restart act on: the current one, or else the one the PID
// file records (adopted). nil when there is none.
func (e *Exec) target() (*process, error) {
	if p := e.current(); p != nil {
		return p, nil
	}
	return e.adopt()
}
