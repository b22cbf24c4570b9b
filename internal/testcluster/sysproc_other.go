//go:build unix && !linux

package testcluster

import "syscall"

// sysProcAttr puts the agent in its own process group; there is no parent-death signal outside Linux.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
