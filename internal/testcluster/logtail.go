package testcluster

import (
	"bytes"
	"fmt"
	"io"
	"os"
)

// tailWindow bounds how much of a log file tailFile reads.
const tailWindow = 1 << 20

// tailFile returns the last n lines of the file at path (reading at most its last tailWindow bytes).
func tailFile(path string, n int) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("failed to open %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("failed to stat %s: %w", path, err)
	}
	off := max(st.Size()-tailWindow, 0)
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
		return "", fmt.Errorf("failed to read %s: %w", path, err)
	}
	return lastLines(buf, n), nil
}

// lastLines returns the last n lines of b (a trailing newline does not count as an empty line).
func lastLines(b []byte, n int) string {
	b = bytes.TrimRight(b, "\n")
	if n <= 0 || len(b) == 0 {
		return ""
	}
	i := len(b)
	for range n {
		j := bytes.LastIndexByte(b[:i], '\n')
		if j < 0 {
			return string(b)
		}
		i = j
	}
	return string(b[i+1:])
}
