package testcluster

import (
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
)

// Env is a TB for programs (scripts/devcluster): it logs through an hclog.Logger, makes temporary
// directories under Dir, and runs the registered cleanups, last first, on Close.
type Env struct {
	dir    string
	logger hclog.Logger

	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

// NewEnv returns an Env whose TempDir creates directories under dir (which must exist).
func NewEnv(dir string, logger hclog.Logger) *Env {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &Env{dir: dir, logger: logger}
}

// Helper does nothing.
func (e *Env) Helper() {}

// Logf logs at info level.
func (e *Env) Logf(format string, args ...any) { e.logger.Info(fmt.Sprintf(format, args...)) }

// Cleanup registers f to run on Close.
func (e *Env) Cleanup(f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cleanups = append(e.cleanups, f)
}

// TempDir creates a new directory under Dir, or returns "" (and logs why) if it cannot.
func (e *Env) TempDir() string {
	d, err := os.MkdirTemp(e.dir, "cluster-")
	if err != nil {
		e.logger.Error("failed to create a temporary directory", "dir", e.dir, "error", err)
		return ""
	}
	return d
}

// Fail marks the Env failed: a cluster's teardown then dumps its agents' logs.
func (e *Env) Fail() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failed = true
}

// Failed reports whether Fail was called.
func (e *Env) Failed() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.failed
}

// Close runs the cleanups, last registered first, once.
func (e *Env) Close() {
	e.mu.Lock()
	cleanups := e.cleanups
	e.cleanups = nil
	e.mu.Unlock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
}

// logfWriter sends each line hclog writes to a Logf function.
type logfWriter struct {
	logf func(format string, args ...any)
}

func (w *logfWriter) Write(p []byte) (int, error) {
	w.logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
