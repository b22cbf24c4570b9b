package testcluster

import "syscall"

// sysProcAttr puts the agent in its own process group (so a terminal's Ctrl-C reaches only the harness,
// and teardown can signal the group) and asks the kernel to SIGKILL it if the thread that started it dies:
// a test binary killed by -timeout or a signal runs no cleanups. Go keeps unlocked threads alive, so in
// practice this fires when the test process dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
