package install

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// DefaultProbeTimeout bounds a version probe when the caller's context has no deadline: `consul version`
// answers in well under a second, so a binary that takes longer is broken (or not what we think it is).
const DefaultProbeTimeout = 10 * time.Second

// maxProbeOutput bounds how much of a probe's output is kept (for the match and for error messages).
const maxProbeOutput = 64 << 10

// Prober runs the binary at path and returns what it says about its version, for example the output of
// `consul version` ("Consul v1.16.1\nRevision ..."). Tests pass a func that needs no real binary.
type Prober func(ctx context.Context, path string) (string, error)

// VersionCommand returns a Prober that runs `<path> <args...>` (for example args "version") and returns
// its combined output. It applies DefaultProbeTimeout when ctx has no deadline.
func VersionCommand(args ...string) Prober {
	return func(ctx context.Context, path string) (string, error) {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, DefaultProbeTimeout)
			defer cancel()
		}
		var out boundedBuffer
		cmd := exec.CommandContext(ctx, path, args...)
		cmd.Stdout = &out
		cmd.Stderr = &out
		cmd.WaitDelay = time.Second
		if err := cmd.Run(); err != nil {
			return out.String(), fmt.Errorf("failed to run %s %s: %w: %s",
				path, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
		}
		return out.String(), nil
	}
}

// Check verifies that path (normally a staged file) is an executable regular file and that probe's
// output names version as a word ("1.16.1" or "v1.16.1"; "v1.16.10" and "v1.16.1-rc1" do not match).
func Check(ctx context.Context, path, version string, probe Prober) error {
	if err := validVersion(version); err != nil {
		return err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("failed to stat %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("failed to check %s (mode %s): %w", path, fi.Mode(), ErrNotExecutable)
	}
	out, err := probe(ctx, path)
	if err != nil {
		return fmt.Errorf("failed to probe the version of %s: %w", path, err)
	}
	if !NamesVersion(out, version) {
		return fmt.Errorf("failed to find version %s in the output of %s: %w: %q",
			version, path, ErrVersionMismatch, firstLine(out))
	}
	return nil
}

// NamesVersion reports whether out contains version as a whole word, optionally prefixed with "v".
// Pure: used by Check and by callers that probe a running agent another way.
func NamesVersion(out, version string) bool {
	for _, w := range strings.FieldsFunc(out, func(r rune) bool {
		return r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == ',' || r == '(' || r == ')' ||
			r == '"' || r == '\''
	}) {
		if w == version || w == "v"+version {
			return true
		}
	}
	return false
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// boundedBuffer keeps the first maxProbeOutput bytes written to it and discards the rest.
type boundedBuffer struct{ bytes.Buffer }

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if room := maxProbeOutput - b.Len(); room > 0 {
		if len(p) > room {
			b.Buffer.Write(p[:room])
		} else {
			b.Buffer.Write(p)
		}
	}
	return len(p), nil
}
