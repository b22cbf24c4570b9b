package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/upgrader-dev/upgrader/internal/rollout"
	"github.com/upgrader-dev/upgrader/internal/testbin"
	"github.com/upgrader-dev/upgrader/internal/testcluster"
)

// BenchmarkRollout_3Servers2Clients times the main job on real Consul: from writing the target to every
// managed node confirmed on 1.16.1 (3 servers, 2 managed clients, 1 client the rollout never restarts).
// The fleet is started outside the timer. Besides ns/op it reports, from the outside monitor:
// write-unavail-ms (sum of write gaps > 50ms through the unrestarted client), restart-unavail-ms (the
// part of it around server restarts), failed-writes and max-servers-impaired.
func BenchmarkRollout_3Servers2Clients(b *testing.B) {
	testbin.Require(b, "1.16.0")
	testbin.Require(b, "1.16.1")
	var unavail, restartUnavail, failed, impaired float64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		f, err := Start(ctx, b, Options{Block: 47, Servers: 3, Clients: 3, Unmanaged: []string{"c3"}})
		if err != nil {
			cancel()
			b.Fatal(err)
		}
		mon := NewMonitor(f.Cluster, f.Cluster.Node("c3"), rollout.ServerLockPrefix(rollout.DefaultPrefix, "consul")+".lock")
		mon.WatchClients([]*testcluster.Node{f.Cluster.Node("c1"), f.Cluster.Node("c2")}, rollout.ClientLockPrefix(rollout.DefaultPrefix, "consul")+".lock")
		mctx, stopMon := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { mon.Run(mctx); close(done) }()
		store, err := f.Store("c3")
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		b.StartTimer()
		if _, err := store.SetTarget(ctx, rollout.Target{Version: "1.16.1"}); err != nil {
			b.Fatal(err)
		}
		if err := f.WaitRolledOut(ctx, store, "1.16.1", nil); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		stopMon()
		<-done
		rep := mon.Report(start, time.Time{})
		b.Logf("monitor: %s", rep)
		unavail += float64(rep.Unavailable.Milliseconds())
		restartUnavail += float64(rep.RestartUnavailable.Milliseconds())
		failed += float64(rep.FailedWrites)
		impaired = max(impaired, float64(rep.MaxServersImpaired))
		f.teardown()
		cancel()
	}
	n := float64(b.N)
	b.ReportMetric(unavail/n, "write-unavail-ms")
	b.ReportMetric(restartUnavail/n, "restart-unavail-ms")
	b.ReportMetric(failed/n, "failed-writes")
	b.ReportMetric(impaired, "max-servers-impaired")
}
