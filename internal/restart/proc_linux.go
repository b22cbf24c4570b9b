//go:build linux

package restart

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// procInfo is what /proc says about one process.
type procInfo struct {
	pid        int
	state      byte   // R, S, D, Z, X, ...
	pgrp       int    // process group id
	startTicks uint64 // start time in clock ticks since boot: tells a reused pid apart
	exe        string // readlink /proc/<pid>/exe, "" when unreadable
	exeErr     error
	argv0      string // first word of /proc/<pid>/cmdline
}

// gone reports whether the process has ended (or is a zombie waiting to be reaped).
func (i procInfo) gone() bool { return i.state == 'Z' || i.state == 'X' }

// errNoProcess means the pid does not exist.
var errNoProcess = errors.New("no such process")

// inspect reads /proc/<pid>. It returns errNoProcess when the process does not exist.
func inspect(pid int) (procInfo, error) {
	info := procInfo{pid: pid}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if errors.Is(err, fs.ErrNotExist) {
		return info, errNoProcess
	}
	if err != nil {
		return info, fmt.Errorf("failed to read /proc/%d/stat: %w", pid, err)
	}
	state, pgrp, start, err := parseStat(string(b))
	if err != nil {
		return info, fmt.Errorf("failed to parse /proc/%d/stat: %w", pid, err)
	}
	info.state, info.pgrp, info.startTicks = state, pgrp, start
	info.exe, info.exeErr = os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if cmd, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err == nil {
		info.argv0, _, _ = strings.Cut(string(cmd), "\x00")
	}
	return info, nil
}

// parseStat extracts state (field 3), pgrp (field 5) and starttime (field 22) from /proc/<pid>/stat. The
// command name (field 2) is in parentheses and may itself contain spaces and parentheses, so fields are
// counted from the last ')'.
func parseStat(s string) (state byte, pgrp int, start uint64, err error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, 0, errors.New("no command name")
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3
	if len(f) < 20 || len(f[0]) != 1 {
		return 0, 0, 0, fmt.Errorf("only %d fields", len(f)+2)
	}
	if pgrp, err = strconv.Atoi(f[2]); err != nil {
		return 0, 0, 0, fmt.Errorf("bad pgrp: %w", err)
	}
	if start, err = strconv.ParseUint(f[19], 10, 64); err != nil {
		return 0, 0, 0, fmt.Errorf("bad starttime: %w", err)
	}
	return f[0][0], pgrp, start, nil
}

// groupMembers returns the pids of live (not zombie) processes in process group pgid.
func groupMembers(pgid int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("failed to list /proc: %w", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		state, pgrp, _, err := parseStat(string(b))
		if err != nil || pgrp != pgid || state == 'Z' || state == 'X' {
			continue
		}
		pids = append(pids, pid)
	}
	return pids, nil
}
