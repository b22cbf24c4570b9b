package lock_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/upgrader-dev/upgrader/internal/consulconn"
	"github.com/upgrader-dev/upgrader/internal/lock"
	"github.com/upgrader-dev/upgrader/internal/testcluster"
)

// TestHelperHolder is not a test: the F10 tests run it as a separate upgrader process that takes the lock,
// prints "ACQUIRED <session>", and holds it until killed (SIGKILL: a crash) or stopped (SIGTERM: it
// releases and prints "RELEASED").
func TestHelperHolder(t *testing.T) {
	if os.Getenv("LOCK_HELPER") != "1" {
		t.Skip("helper process for the F10 tests")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	logger := hclog.New(&hclog.LoggerOptions{Name: "helper", Output: os.Stderr, Level: hclog.Info})
	cc, err := consulconn.New(consulconn.Config{
		Address:   os.Getenv("LOCK_HELPER_ADDR"),
		Fallbacks: strings.Split(os.Getenv("LOCK_HELPER_FALLBACKS"), ","),
		Logger:    logger,
	})
	if err != nil {
		fmt.Println("ERROR", err)
		return
	}
	defer cc.Close()
	l, err := lock.New(cc.API(), lock.Options{
		Prefix:    os.Getenv("LOCK_HELPER_PREFIX"),
		Limit:     1,
		Holder:    os.Getenv("LOCK_HELPER_HOLDER"),
		Value:     []byte("helper pid " + fmt.Sprint(os.Getpid())),
		SessionID: os.Getenv("LOCK_HELPER_SESSION"),
		Logger:    logger,
	})
	if err != nil {
		fmt.Println("ERROR", err)
		return
	}
	actx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	lost, err := l.Acquire(actx)
	if err != nil {
		fmt.Println("ERROR", err)
		return
	}
	fmt.Println("ACQUIRED", l.SessionID())
	never := time.NewTimer(5 * time.Minute) // never outlive a broken test
	defer never.Stop()
	select {
	case <-ctx.Done():
		rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer rcancel()
		if err := l.Release(rctx); err != nil {
			fmt.Println("ERROR", err)
			return
		}
		fmt.Println("RELEASED")
	case <-lost:
		fmt.Println("LOST", l.Err())
	case <-never.C:
	}
}

// holderProc is a TestHelperHolder process.
type holderProc struct {
	cmd   *exec.Cmd
	lines chan string
}

func startHolder(t *testing.T, c *testcluster.Cluster, via *testcluster.Node, prefix, session string) *holderProc {
	t.Helper()
	var fallbacks []string
	for _, s := range c.Servers() {
		fallbacks = append(fallbacks, s.HTTPAddr)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHolder$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		"LOCK_HELPER=1",
		"LOCK_HELPER_ADDR="+via.HTTPAddr,
		"LOCK_HELPER_FALLBACKS="+strings.Join(fallbacks, ","),
		"LOCK_HELPER_PREFIX="+prefix,
		"LOCK_HELPER_HOLDER="+via.Name,
		"LOCK_HELPER_SESSION="+session,
	)
	cmd.Stderr = newTLog(t, "holder process: ")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holderProc{cmd: cmd, lines: make(chan string, 16)}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		defer close(h.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		for range h.lines { // drain so the scanner ends
		}
		<-scanned
		_ = cmd.Wait()
	})
	return h
}

// expect waits for a line starting with word and returns the rest.
func (h *holderProc) expect(t *testing.T, ctx context.Context, word string) string {
	t.Helper()
	for {
		select {
		case line, ok := <-h.lines:
			if !ok {
				t.Fatalf("holder process ended before %s", word)
			}
			if rest, found := strings.CutPrefix(line, word+" "); found || line == word {
				return rest
			}
			if strings.HasPrefix(line, "ERROR") {
				t.Fatalf("holder process: %s", line)
			}
		case <-ctx.Done():
			t.Fatalf("no %s from the holder process", word)
		}
	}
}

// contend starts an in-process Acquire and reports when it returns.
func contend(t *testing.T, l *lock.Lock, ctx context.Context) <-chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := l.Acquire(ctx)
		ch <- err
	}()
	return ch
}

// waitContending waits until a second contender entry (the in-process contender's) is under prefix.
func waitContending(t *testing.T, ctx context.Context, via *testcluster.Node, prefix string) {
	t.Helper()
	err := waitFor(ctx, "the contender to be waiting", 50*time.Millisecond, func(ctx context.Context) (bool, error) {
		keys, _, err := via.API().KV().Keys(prefix, "", (&api.QueryOptions{}).WithContext(ctx))
		return len(keys) >= 3, err // the record and two contender entries
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestF10_HolderCrashFreesAfterTTL: the holder process is killed (SIGKILL) while holding the lock with the
// default TTL and lock-delay. Its session stops being renewed; Consul invalidates it (after up to 2×TTL),
// and the waiting contender takes the slot once the dead holder has been dead for LockDelay. Measured and
// logged, not asserted.
func TestF10_HolderCrashFreesAfterTTL(t *testing.T) {
	c, logger := setup(t, 1)
	ctx := ctxT(t, 3*time.Minute)
	prefix := "upgrader/consul/lock/servers/"
	c1, s1 := c.Node("c1"), c.Node("s1")
	a := startHolder(t, c, c1, prefix, "")
	sid := a.expect(t, ctx, "ACQUIRED")
	observer := conn(t, c, s1, logger).API()

	b := newLock(t, conn(t, c, s1, logger).API(), lock.Options{Prefix: prefix, Holder: s1.Name, Address: s1.IP}, logger)
	got := contend(t, b, ctx)
	waitContending(t, ctx, s1, prefix)

	killed := time.Now()
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	var invalidated time.Duration
	if err := waitFor(ctx, "the crashed holder's session to be invalidated", 100*time.Millisecond, func(ctx context.Context) (bool, error) {
		ok, err := sessionExists(ctx, observer, sid)
		return err == nil && !ok, err
	}); err != nil {
		t.Fatal(err)
	}
	invalidated = time.Since(killed)
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("the waiting contender did not get the lock: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the waiting contender never got the lock")
	}
	freed := time.Since(killed)
	t.Logf("holder killed -9: session invalidated by Consul after %s (TTL %s, Consul waits up to 2×TTL since the last renewal); next holder took the slot after %s (%s after the invalidation; LockDelay %s)",
		invalidated.Round(100*time.Millisecond), lock.DefaultTTL, freed.Round(100*time.Millisecond),
		(freed - invalidated).Round(100*time.Millisecond), lock.DefaultLockDelay)
	if held, err := b.StillHeld(ctx); err != nil || !held {
		t.Fatalf("StillHeld = %v, %v", held, err)
	}
}

// TestF10_RestartedHolderResumesItsSession: the holder process is killed and restarted at once with its
// journaled session (Options.SessionID). It re-enters the slot it already holds: the semaphore names that
// session in every read in between, and a contender waiting all along does not get in until the resumed
// holder releases.
func TestF10_RestartedHolderResumesItsSession(t *testing.T) {
	c, logger := setup(t, 1)
	ctx := ctxT(t, 3*time.Minute)
	prefix := "upgrader/consul/lock/servers/"
	c1, s1 := c.Node("c1"), c.Node("s1")
	a := startHolder(t, c, c1, prefix, "")
	sid := a.expect(t, ctx, "ACQUIRED")
	smp := startSampler(t, conn(t, c, s1, logger).API(), prefix, sid)

	b := newLock(t, conn(t, c, s1, logger).API(), lock.Options{Prefix: prefix, Holder: s1.Name, Address: s1.IP}, logger)
	got := contend(t, b, ctx)
	waitContending(t, ctx, s1, prefix)

	crashed := time.Now()
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	a2 := startHolder(t, c, c1, prefix, sid)
	resumed := a2.expect(t, ctx, "ACQUIRED")
	t.Logf("restarted holder re-entered after %s with session %s (journaled %s)", time.Since(crashed).Round(time.Millisecond), resumed, sid)
	if resumed != sid {
		t.Fatalf("resumed with another session: %s, want %s", resumed, sid)
	}
	// Hold on for more than a TTL: the resumed process renews the same session.
	if err := waitFor(ctx, "a TTL to pass since the crash", time.Second, func(context.Context) (bool, error) {
		return time.Since(crashed) > lock.DefaultTTL+time.Second, nil
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		t.Fatalf("the contender got in while the resumed holder held the slot (err %v)", err)
	default:
	}
	smp.report(t)

	released := time.Now()
	if err := a2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	a2.expect(t, ctx, "RELEASED")
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("contender after the release: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the contender never got the lock")
	}
	t.Logf("contender took the slot %s after the resumed holder was told to release", time.Since(released).Round(time.Millisecond))
}
