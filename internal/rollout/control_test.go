package rollout

import (
	"errors"
	"testing"
	"time"
)

func TestParseControl(t *testing.T) {
	cases := []struct {
		in      string
		want    ControlState
		wantErr bool
	}{
		{"", Running, false},
		{`{}`, Running, false},
		{`{"state":"paused","reason":"freeze"}`, Paused, false},
		{`{"state":"halted","halted_by":"n1"}`, Halted, false},
		{`{"state":"stopped"}`, "", true},
		{`nope`, "", true},
	}
	for _, tc := range cases {
		got, err := ParseControl([]byte(tc.in))
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseControl(%q) error = %v, wantErr %v", tc.in, err, tc.wantErr)
			continue
		}
		if err == nil && got.State != tc.want {
			t.Errorf("ParseControl(%q) = %q, want %q", tc.in, got.State, tc.want)
		}
	}
}

func TestControlDecisions(t *testing.T) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	running := Control{State: Running}
	paused := Control{State: Paused, By: "bob", Reason: "freeze"}
	halted := Control{State: Halted, By: "n1", HaltedBy: "n1", Reason: "first failure"}

	t.Run("halt", func(t *testing.T) {
		cases := []struct {
			name      string
			cur       Control
			write     bool
			wantBy    string
			wantCause string
		}{
			{"from running", running, true, "n2", "second"},
			{"from paused", paused, true, "n2", "second"},
			{"keeps an existing halt", halted, false, "n1", "first failure"},
		}
		for _, tc := range cases {
			next, write := haltDecision(tc.cur, "n2", "second", now)
			if write != tc.write || next.HaltedBy != tc.wantBy || next.Reason != tc.wantCause || next.State != Halted {
				t.Errorf("%s: got %+v write=%v", tc.name, next, write)
			}
		}
	})
	t.Run("pause", func(t *testing.T) {
		if next, write, err := pauseDecision(running, "bob", "r", now); err != nil || !write || next.State != Paused || !next.At.Equal(now) {
			t.Errorf("pause from running: %+v %v %v", next, write, err)
		}
		if _, write, err := pauseDecision(paused, "bob", "r", now); err != nil || write {
			t.Errorf("pause from paused should be a no-op: %v %v", write, err)
		}
		if next, write, err := pauseDecision(halted, "bob", "r", now); !errors.Is(err, ErrHalted) || write || next.State != Halted {
			t.Errorf("pause must not override a halt: %+v %v %v", next, write, err)
		}
	})
	t.Run("resume", func(t *testing.T) {
		for _, cur := range []Control{paused, halted} {
			next, write := resumeDecision(cur, "carol", "fixed", now)
			if !write || next.State != Running || next.HaltedBy != "" || next.By != "carol" {
				t.Errorf("resume from %s: %+v %v", cur.State, next, write)
			}
		}
		if _, write := resumeDecision(running, "carol", "", now); write {
			t.Error("resume from running should be a no-op")
		}
	})
}

func TestControlAllowsStartAndString(t *testing.T) {
	cases := []struct {
		c     Control
		start bool
		str   string
	}{
		{Control{}, true, "running"},
		{Control{State: Running, By: "carol", Reason: "fixed"}, true, "running by carol: fixed"},
		{Control{State: Paused, By: "bob"}, false, "paused by bob"},
		{Control{State: Halted, By: "x", HaltedBy: "n1", Reason: "gate"}, false, "halted by n1: gate"},
	}
	for _, tc := range cases {
		if got := tc.c.AllowsStart(); got != tc.start {
			t.Errorf("%+v AllowsStart = %v", tc.c, got)
		}
		if got := tc.c.String(); got != tc.str {
			t.Errorf("String() = %q, want %q", got, tc.str)
		}
	}
}

func TestNodeStatusTransition(t *testing.T) {
	t0 := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	s := NodeStatus{Node: "n1"}.Transition(StateWaiting, "lock", t0)
	s = s.Transition(StateWaiting, "servers", t0.Add(time.Minute))
	if !s.Since.Equal(t0) || s.Step != "servers" || !s.Updated.Equal(t0.Add(time.Minute)) {
		t.Fatalf("same state must keep Since: %+v", s)
	}
	s = s.Transition(StateLocked, "", t0.Add(2*time.Minute))
	if !s.Since.Equal(t0.Add(2 * time.Minute)) {
		t.Fatalf("new state must move Since: %+v", s)
	}
}

func TestKeys(t *testing.T) {
	k, err := NewKeys("upgrader", "consul")
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		k.Target():                              "upgrader/consul/target",
		k.Control():                             "upgrader/consul/control",
		k.Node("n1"):                            "upgrader/consul/nodes/n1",
		k.NodesPrefix():                         "upgrader/consul/nodes/",
		k.Rollout():                             "upgrader/consul/rollout",
		k.History("1-2"):                        "upgrader/consul/history/1-2",
		ServerLockPrefix("upgrader/", "consul"): "upgrader/consul/lock/servers/",
		ClientLockPrefix("upgrader", "nomad"):   "upgrader/nomad/lock/clients/",
		ServerLockPrefix("", "consul"):          "consul/lock/servers/",
	}
	for got, want := range cases {
		if got != want {
			t.Errorf("key %q, want %q", got, want)
		}
	}
	for _, bad := range [][2]string{{"/abs/", "consul"}, {"x/", ""}, {"x/", "a/b"}, {"x/", ".."}} {
		if _, err := NewKeys(bad[0], bad[1]); !errors.Is(err, ErrBadKey) {
			t.Errorf("NewKeys(%q, %q) = %v, want ErrBadKey", bad[0], bad[1], err)
		}
	}
	if got := RolloutID("1.16.1", 42); got != "1.16.1-42" {
		t.Errorf("RolloutID = %q", got)
	}
}
