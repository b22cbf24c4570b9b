//go:build unix

package restart

import (
	"errors"
	"os/exec"
	"syscall"
)

// setProcessGroup makes the child the leader of a new process group, so that signals reach everything
// it spawns and a Ctrl-C aimed at the upgrader's own group does not reach the agent. No parent-death
// signal is set: the agent deliberately outlives a crashed upgrader.
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// signalGroup sends sig to every process in group pgid. A group that no longer exists is not an error.
func signalGroup(pgid int, sig syscall.Signal) error {
	if err := syscall.Kill(-pgid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}
