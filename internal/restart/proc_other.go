//go:build unix && !linux

package restart

import (
	"errors"
	"syscall"
)

// procInfo is what the system says about one process. Without /proc only liveness is known, so a PID
// file is never adopted (identity cannot be checked) and process groups are probed with kill(-pgid, 0).
type procInfo struct {
	pid        int
	state      byte
	pgrp       int
	startTicks uint64
	exe        string
	exeErr     error
	argv0      string
}

func (i procInfo) gone() bool { return false }

var errNoProcess = errors.New("no such process")

var errNoProc = errors.New("process identity needs /proc (Linux)")

func inspect(pid int) (procInfo, error) {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return procInfo{pid: pid}, errNoProcess
	}
	return procInfo{pid: pid, exeErr: errNoProc}, nil
}

func groupMembers(pgid int) ([]int, error) {
	if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
		return nil, nil
	}
	return []int{pgid}, nil
}
