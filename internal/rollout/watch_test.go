package rollout

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"
)

// scriptedKV answers Get from a script, one step per call, and records the WaitIndex of each call. It
// only exercises the Store's loop logic (index rules, error classes); behaviour against Consul itself is
// proven in store_consul_test.go.
type scriptedKV struct {
	mu    sync.Mutex
	steps []getStep
	waits []uint64
}

type getStep struct {
	pair  *api.KVPair
	index uint64
	err   error
}

func (k *scriptedKV) Get(key string, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.waits = append(k.waits, q.WaitIndex)
	if len(k.steps) == 0 {
		return nil, nil, errors.New("script exhausted")
	}
	s := k.steps[0]
	k.steps = k.steps[1:]
	if s.err != nil {
		return nil, nil, s.err
	}
	return s.pair, &api.QueryMeta{LastIndex: s.index}, nil
}

func (k *scriptedKV) List(string, *api.QueryOptions) (api.KVPairs, *api.QueryMeta, error) {
	return nil, nil, errors.New("not scripted")
}
func (k *scriptedKV) Put(*api.KVPair, *api.WriteOptions) (*api.WriteMeta, error) {
	return nil, errors.New("not scripted")
}
func (k *scriptedKV) CAS(*api.KVPair, *api.WriteOptions) (bool, *api.WriteMeta, error) {
	return false, nil, errors.New("not scripted")
}

// stepClock advances by step on every Now, so a blocking call looks like it took step.
type stepClock struct {
	mu   sync.Mutex
	now  time.Time
	step time.Duration
}

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(c.step)
	return c.now
}

func pairOf(v string, idx uint64) *api.KVPair {
	return &api.KVPair{Key: "upgrader/consul/target", Value: []byte(v), ModifyIndex: idx}
}

func testLogger(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: tWriter{t}})
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

var _ io.Writer = tWriter{}

func TestWatchTargetIndexRules(t *testing.T) {
	defer goleak.VerifyNone(t)
	cases := []struct {
		name      string
		waitIndex uint64
		steps     []getStep
		step      time.Duration // how long each Get seems to take
		wantVer   string
		wantIndex uint64
		wantErr   error
		wantWaits []uint64
		wantLog   string
	}{
		{
			name: "unchanged return blocks again", waitIndex: 10, step: 3 * time.Second,
			steps:   []getStep{{pairOf("1.16.0", 10), 10, nil}, {pairOf("1.16.0", 10), 10, nil}, {pairOf("1.16.1", 12), 12, nil}},
			wantVer: "1.16.1", wantIndex: 12, wantWaits: []uint64{10, 10, 10},
		},
		{
			name: "index going backwards resets and returns", waitIndex: 50, step: 3 * time.Second,
			steps:   []getStep{{pairOf("1.16.1", 7), 7, nil}},
			wantVer: "1.16.1", wantIndex: 7, wantWaits: []uint64{50},
		},
		{
			name: "index zero becomes one", waitIndex: 0, step: 3 * time.Second,
			steps:   []getStep{{nil, 0, nil}},
			wantErr: ErrNoTarget, wantIndex: 1, wantWaits: []uint64{0},
		},
		{
			name: "early unchanged returns are backed off, not spun on", waitIndex: 5, step: time.Millisecond,
			steps:   []getStep{{pairOf("1.16.0", 5), 5, nil}, {pairOf("1.16.0", 5), 5, nil}, {pairOf("1.16.1", 6), 6, nil}},
			wantVer: "1.16.1", wantIndex: 6, wantWaits: []uint64{5, 5, 5}, wantLog: "returned early without a change, backing off",
		},
		{
			name: "transient errors retry", waitIndex: 5, step: time.Millisecond,
			steps: []getStep{{err: errors.New("Unexpected response code: 500 (No cluster leader)")},
				{err: errors.New("dial tcp: connection refused")}, {pairOf("1.16.1", 9), 9, nil}},
			wantVer: "1.16.1", wantIndex: 9, wantWaits: []uint64{5, 5, 5}, wantLog: "failed to read key, retrying",
		},
		{
			name: "403 is permanent", waitIndex: 5, step: time.Millisecond,
			steps:   []getStep{{err: api.StatusError{Code: 403, Body: "Permission denied"}}},
			wantErr: ErrPermissionDenied, wantIndex: 5, wantWaits: []uint64{5},
		},
		{
			name: "invalid content carries its index", waitIndex: 3, step: 3 * time.Second,
			steps:   []getStep{{pairOf("1.16", 4), 4, nil}},
			wantErr: &TargetError{}, wantIndex: 4, wantWaits: []uint64{3},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kv := &scriptedKV{steps: tc.steps}
			var logs strings.Builder
			logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: io.MultiWriter(&logs, tWriter{t})})
			s, err := NewStore(kv, "consul", WithClock(&stepClock{step: tc.step}), WithLogger(logger),
				WithRetry(time.Millisecond, 5*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			tg, _, idx, err := s.WatchTarget(ctx, tc.waitIndex)
			switch want := tc.wantErr.(type) {
			case nil:
				if err != nil || tg.Version != tc.wantVer {
					t.Fatalf("got %+v, %v; want version %s", tg, err, tc.wantVer)
				}
			case *TargetError:
				var te *TargetError
				if !errors.As(err, &te) || te.Index != tc.wantIndex {
					t.Fatalf("got %v, want a *TargetError at index %d", err, tc.wantIndex)
				}
			default:
				if !errors.Is(err, want) {
					t.Fatalf("got %v, want %v", err, want)
				}
			}
			if idx != tc.wantIndex {
				t.Errorf("index = %d, want %d", idx, tc.wantIndex)
			}
			if !slices.Equal(kv.waits, tc.wantWaits) {
				t.Errorf("wait indexes = %v, want %v", kv.waits, tc.wantWaits)
			}
			if n := strings.Count(logs.String(), tc.wantLog); tc.wantLog != "" && n != 2 {
				t.Errorf("logged %q %d times, want 2 (one backoff per early return):\n%s", tc.wantLog, n, logs.String())
			}
		})
	}
}

func TestTargetWatchSuppressesRepeatedNoTarget(t *testing.T) {
	kv := &scriptedKV{steps: []getStep{
		{nil, 10, nil},                  // first: reported
		{nil, 11, nil},                  // a nearby write: suppressed
		{nil, 15, nil},                  // another: suppressed
		{pairOf("1.16.1", 16), 16, nil}, // the target appears: reported
		{nil, 17, nil},                  // deleted: reported
	}}
	s, err := NewStore(kv, "consul", WithClock(&stepClock{step: 3 * time.Second}))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	w := s.NewTargetWatch()
	if _, _, idx, err := w.Next(ctx); !errors.Is(err, ErrNoTarget) || idx != 10 {
		t.Fatalf("first: %d %v", idx, err)
	}
	if tg, _, idx, err := w.Next(ctx); err != nil || idx != 16 || tg.Version != "1.16.1" {
		t.Fatalf("second: %+v %d %v", tg, idx, err)
	}
	if _, _, idx, err := w.Next(ctx); !errors.Is(err, ErrNoTarget) || idx != 17 {
		t.Fatalf("third: %d %v", idx, err)
	}
	if want := []uint64{0, 10, 11, 15, 16}; !slices.Equal(kv.waits, want) {
		t.Errorf("wait indexes = %v, want %v", kv.waits, want)
	}
}

func TestReadTargetDoesNotRetry(t *testing.T) {
	kv := &scriptedKV{steps: []getStep{
		{err: errors.New("Unexpected response code: 500 (No cluster leader)")},
		{err: api.StatusError{Code: 403, Body: "ACL not found"}},
		{pairOf("v1.16.1", 8), 8, nil},
	}}
	s, err := NewStore(kv, "consul")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, _, _, err := s.ReadTarget(ctx); err == nil || errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("500: %v", err)
	}
	if _, _, _, err := s.ReadTarget(ctx); !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("403: %v", err)
	}
	if tg, _, idx, err := s.ReadTarget(ctx); err != nil || tg.Version != "1.16.1" || idx != 8 {
		t.Fatalf("ok: %+v %d %v", tg, idx, err)
	}
	if len(kv.waits) != 3 {
		t.Fatalf("%d requests, want 3", len(kv.waits))
	}
}
