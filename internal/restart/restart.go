// Package restart owns how a node's agent process is restarted after its binary was swapped: by
// supervising it as a child (Exec, for dev, demo and containers), through systemd (Systemd), or with any
// command the operator names (Command). A Nomad-task restarter fits the same Restarter interface.
package restart

import (
	"context"
	"errors"
)

// Restarter restarts the local agent so that it runs the binary now at its live path. Restart returns
// once the restart was carried out (the new process was started, the unit reports active, the command
// succeeded); whether the agent is healthy is for the caller's gates to judge.
type Restarter interface {
	Restart(ctx context.Context) error
}

// Sentinel errors. Callers match them with errors.Is.
var (
	// ErrMissingCommand is returned when there is nothing to run (an empty Path, Argv or Unit).
	ErrMissingCommand = errors.New("restart: missing command")
	// ErrRunning is returned by Exec.Start when a process is already running (started or adopted).
	ErrRunning = errors.New("restart: already running")
	// ErrNotStopped is returned when a process (or a member of its process group) is still there after
	// SIGKILL and a bounded wait.
	ErrNotStopped = errors.New("restart: process did not stop")
	// ErrClosed is returned by an Exec after Close.
	ErrClosed = errors.New("restart: supervisor closed")
	// ErrUnidentified is returned when the PID file names a live process whose identity cannot be read:
	// Exec neither adopts it nor starts a second copy.
	ErrUnidentified = errors.New("restart: cannot identify the process in the PID file")
	// ErrNotActive is returned by Systemd when the unit does not become active.
	ErrNotActive = errors.New("restart: unit not active")
)

// Compile-time checks that every restarter satisfies the interface.
var (
	_ Restarter = (*Exec)(nil)
	_ Restarter = Systemd{}
	_ Restarter = Command{}
)
