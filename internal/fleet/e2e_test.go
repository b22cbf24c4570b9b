package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/upgrader-dev/upgrader/internal/testbin"
)

// e2e prepares a real-Consul rollout test: skipped under -short, run in parallel with this package's other
// tests (each uses its own address block), with both Consul versions built, and a deadline for all of it.
func e2e(t *testing.T, timeout time.Duration) context.Context {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real Consul cluster")
	}
	t.Parallel()
	testbin.Require(t, "1.16.0")
	testbin.Require(t, "1.16.1")
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}
