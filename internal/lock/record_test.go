package lock

import (
	"encoding/json"
	"errors"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

const pfx = "upgrader/consul/lock/servers/"

// kvs builds a prefix read: the .lock record (nil: absent) and contender entries (session id -> holding
// session, "" for a dead entry).
func kvs(t *testing.T, limit int, holders []string, contenders map[string]string) api.KVPairs {
	t.Helper()
	var out api.KVPairs
	if holders != nil {
		rec := record{Limit: limit, Holders: map[string]bool{}}
		for _, h := range holders {
			rec.Holders[h] = true
		}
		b, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, &api.KVPair{Key: pfx + ".lock", Value: b, Flags: api.SemaphoreFlagValue, ModifyIndex: 42})
	}
	for id, sess := range contenders {
		out = append(out, &api.KVPair{Key: pfx + id, Value: []byte("v-" + id), Session: sess, Flags: api.SemaphoreFlagValue, ModifyIndex: 7})
	}
	return out
}

func TestReadState(t *testing.T) {
	t.Run("absent record", func(t *testing.T) {
		st, err := readState(pfx, nil, 1)
		if err != nil || st.lockPair != nil || st.rec.Limit != 1 || len(st.rec.Holders) != 0 || st.lockIndex() != 0 {
			t.Fatalf("st=%+v err=%v", st, err)
		}
	})
	t.Run("holders and liveness", func(t *testing.T) {
		pairs := kvs(t, 2, []string{"a", "b"}, map[string]string{"a": "a", "b": ""})
		pairs = append(pairs,
			&api.KVPair{Key: pfx + "nested/x", Session: "c", Flags: api.SemaphoreFlagValue}, // live, not a contender
			&api.KVPair{Key: pfx + "other", Flags: 0})                                       // not ours
		st, err := readState(pfx, pairs, 2)
		if err != nil {
			t.Fatal(err)
		}
		if !st.holds("a") || st.holds("b") || st.holds("c") || st.holds("") {
			t.Fatalf("holds wrong: live=%v holders=%v", st.live, st.rec.Holders)
		}
		if _, ok := st.contenders["nested/x"]; ok || len(st.contenders) != 2 {
			t.Fatalf("contenders %v", st.contenders)
		}
		if st.lockIndex() != 42 || strings.Join(st.holderList(), ",") != "a,b" {
			t.Fatalf("index %d holders %v", st.lockIndex(), st.holderList())
		}
	})
	t.Run("not a semaphore", func(t *testing.T) {
		pairs := api.KVPairs{{Key: pfx + ".lock", Value: []byte("x"), Flags: api.LockFlagValue}}
		if _, err := readState(pfx, pairs, 1); !errors.Is(err, ErrNotSemaphore) {
			t.Fatalf("want ErrNotSemaphore, got %v", err)
		}
	})
	t.Run("garbage record", func(t *testing.T) {
		pairs := api.KVPairs{{Key: pfx + ".lock", Value: []byte("{"), Flags: api.SemaphoreFlagValue}}
		if _, err := readState(pfx, pairs, 1); !errors.Is(err, ErrNotSemaphore) {
			t.Fatalf("want ErrNotSemaphore, got %v", err)
		}
	})
}

func TestDecide(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	delay := 5 * time.Second
	cases := []struct {
		name       string
		limit      int
		recLimit   int
		holders    []string // nil: no record
		contenders map[string]string
		deadSince  map[string]time.Duration // how long ago each was first seen dead
		want       verdict
		wantNext   []string
		wantPruned []string
		wantRetry  time.Duration
		wantStale  []string
		wantErr    error
	}{
		{name: "empty semaphore", limit: 1, contenders: map[string]string{"me": "me"},
			want: verdictTake, wantNext: []string{"me"}},
		{name: "full with a live holder", limit: 1, recLimit: 1, holders: []string{"a"},
			contenders: map[string]string{"a": "a", "me": "me"}, want: verdictWait},
		{name: "room for two", limit: 2, recLimit: 2, holders: []string{"a"},
			contenders: map[string]string{"a": "a", "me": "me"}, want: verdictTake, wantNext: []string{"a", "me"}},
		{name: "already holding: resume re-entry", limit: 1, recLimit: 1, holders: []string{"me"},
			contenders: map[string]string{"me": "me"}, want: verdictHeld},
		{name: "dead holder within lock-delay", limit: 1, recLimit: 1, holders: []string{"dead"},
			contenders: map[string]string{"dead": "", "me": "me"}, deadSince: map[string]time.Duration{"dead": 2 * time.Second},
			want: verdictWait, wantRetry: 3 * time.Second},
		{name: "dead holder first seen now", limit: 1, recLimit: 1, holders: []string{"dead"},
			contenders: map[string]string{"me": "me"}, want: verdictWait, wantRetry: 5 * time.Second},
		{name: "dead holder past lock-delay is pruned", limit: 1, recLimit: 1, holders: []string{"dead"},
			contenders: map[string]string{"dead": "", "me": "me"}, deadSince: map[string]time.Duration{"dead": 6 * time.Second},
			want: verdictTake, wantNext: []string{"me"}, wantPruned: []string{"dead"}},
		{name: "dead holder in delay does not block a free slot", limit: 2, recLimit: 2, holders: []string{"dead"},
			contenders: map[string]string{"me": "me"}, deadSince: map[string]time.Duration{"dead": time.Second},
			want: verdictTake, wantNext: []string{"dead", "me"}},
		{name: "stale contender entries are cleaned, listed ones kept", limit: 1, recLimit: 1, holders: []string{"dead"},
			contenders: map[string]string{"old1": "", "old2": "", "dead": "", "me": "me"},
			deadSince:  map[string]time.Duration{"dead": time.Second},
			want:       verdictWait, wantRetry: 4 * time.Second, wantStale: []string{"old1", "old2"}},
		{name: "limit conflict", limit: 1, recLimit: 2, holders: []string{"a"},
			contenders: map[string]string{"a": "a"}, wantErr: ErrLimitConflict},
		{name: "limit conflict even with no holders", limit: 3, recLimit: 2, holders: []string{},
			wantErr: ErrLimitConflict},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, err := readState(pfx, kvs(t, tc.recLimit, tc.holders, tc.contenders), tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			dead := map[string]time.Time{}
			for h, ago := range tc.deadSince {
				dead[h] = now.Add(-ago)
			}
			d, err := decide(st, pfx, "me", tc.limit, dead, now, delay)
			if tc.wantErr != nil {
				var lc *LimitConflictError
				if !errors.Is(err, tc.wantErr) || !errors.As(err, &lc) || lc.Ours != tc.limit || lc.Theirs != tc.recLimit {
					t.Fatalf("want %v naming both limits, got %v", tc.wantErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.verdict != tc.want {
				t.Fatalf("verdict %v, want %v", d.verdict, tc.want)
			}
			if tc.want == verdictTake {
				var got []string
				for h := range d.next.Holders {
					got = append(got, h)
				}
				sort.Strings(got)
				if !reflect.DeepEqual(got, tc.wantNext) || d.next.Limit != tc.limit {
					t.Fatalf("next %v (limit %d), want %v", got, d.next.Limit, tc.wantNext)
				}
			}
			if !reflect.DeepEqual(d.pruned, tc.wantPruned) {
				t.Fatalf("pruned %v, want %v", d.pruned, tc.wantPruned)
			}
			if d.retryIn != tc.wantRetry {
				t.Fatalf("retryIn %v, want %v", d.retryIn, tc.wantRetry)
			}
			var stale []string
			for _, p := range d.stale {
				stale = append(stale, strings.TrimPrefix(p.Key, pfx))
			}
			if !reflect.DeepEqual(stale, tc.wantStale) {
				t.Fatalf("stale %v, want %v", stale, tc.wantStale)
			}
		})
	}
}

func TestLimitConflictMessage(t *testing.T) {
	err := error(&LimitConflictError{Prefix: pfx, Theirs: 2, Ours: 1})
	want := "semaphore limit conflict: the lock at " + pfx + " says 2, this upgrader is configured with 1"
	if !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("message %q", err.Error())
	}
	if wrapped := notAcquired(err); !errors.Is(wrapped, ErrNotAcquired) || !errors.Is(wrapped, ErrLimitConflict) {
		t.Fatalf("wrapping lost a sentinel: %v", wrapped)
	}
}

func TestNoteDead(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	st, _ := readState(pfx, kvs(t, 1, []string{"a", "b", "me"}, map[string]string{"a": "a", "b": ""}), 1)
	got := noteDead(map[string]time.Time{"b": t0, "gone": t0}, st, "me", t0.Add(time.Minute))
	want := map[string]time.Time{"b": t0} // "a" live, "me" self, "gone" no longer listed
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	st2, _ := readState(pfx, kvs(t, 1, []string{"c"}, nil), 1)
	if got := noteDead(nil, st2, "me", t0); !got["c"].Equal(t0) {
		t.Fatalf("first sighting not recorded: %v", got)
	}
}

// TestRecordWireCompatible proves our record is what api.Semaphore reads and writes.
func TestRecordWireCompatible(t *testing.T) {
	pair, err := encodeRecord(pfx, record{Limit: 2, Holders: map[string]bool{"s1": true}}, 9)
	if err != nil {
		t.Fatal(err)
	}
	if pair.Key != pfx+api.DefaultSemaphoreKey || pair.Flags != api.SemaphoreFlagValue || pair.ModifyIndex != 9 {
		t.Fatalf("pair %+v", pair)
	}
	if string(pair.Value) != `{"Limit":2,"Holders":{"s1":true}}` {
		t.Fatalf("value %s", pair.Value)
	}
	if got := withoutHolder(record{Limit: 2, Holders: map[string]bool{"s1": true, "s2": true}}, "s1"); !reflect.DeepEqual(got.Holders, map[string]bool{"s2": true}) || got.Limit != 2 {
		t.Fatalf("withoutHolder %+v", got)
	}
}

func TestNextWaitIndex(t *testing.T) {
	cases := []struct{ prev, last, want uint64 }{
		{0, 10, 10}, {10, 12, 12}, {12, 12, 12}, {12, 3, 0}, {0, 0, 1},
	}
	for _, c := range cases {
		if got := nextWaitIndex(c.prev, c.last); got != c.want {
			t.Errorf("nextWaitIndex(%d,%d) = %d, want %d", c.prev, c.last, got, c.want)
		}
	}
}
