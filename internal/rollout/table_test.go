package rollout

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestFormatStatusTable(t *testing.T) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	target := Target{Version: "1.16.1", ClientConcurrency: 2, SetBy: "alice", Reason: "CVE-2024-0001", SetAt: ago(10 * time.Minute)}
	statuses := []NodeStatus{
		{Node: "client-b", Role: RoleClient, Version: "1.16.0", Target: "1.16.1", State: StateWaiting, Step: "waiting for servers", Since: ago(95 * time.Second)},
		{Node: "server-c", Role: RoleServer, Version: "1.16.1", Target: "1.16.1", State: StateDone, Since: ago(3*time.Hour + 7*time.Minute)},
		{Node: "client-a", Role: RoleClient, Version: "1.16.0", Target: "1.16.1", State: StateStaged, Since: ago(12 * time.Second)},
		{Node: "server-a", Role: RoleServer, Version: "1.16.0", Target: "1.16.1", State: StateFailed, Step: "rolled back",
			Since: ago(26*time.Hour + 5*time.Minute), LastError: "gate timed out after 2m0s: server-a is not a voter\n(raft configuration has 2 voters of 3) and more text that is cut"},
		{Node: "server-b", Role: RoleServer, Version: "1.16.1", Target: "1.16.1", State: StateConfirming, Step: "holding gates\t(15s of 30s)", Since: ago(15 * time.Second)},
		{Node: "odd", Role: "", State: StateUnknown, LastError: "failed to decode node status upgrader/consul/nodes/odd: invalid character"},
		{Node: "skewed", Role: RoleClient, Version: "1.16.0", State: StateIdle, Since: now.Add(4 * time.Second)},
	}
	cases := []struct {
		name     string
		statuses []NodeStatus
		control  Control
		target   Target
	}{
		{"halted", statuses, Control{State: Halted, By: "server-a", HaltedBy: "server-a", Reason: "gate timed out", At: ago(26 * time.Hour)}, target},
		{"running", statuses[:3], Control{State: Running}, Target{Version: "1.16.1", ClientConcurrency: 1}},
		{"paused-empty", nil, Control{State: Paused, By: "bob", Reason: "change freeze", At: ago(time.Minute)}, target},
		{"no-target", statuses[1:2], Control{}, Target{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := FormatStatusTable(&buf, tc.statuses, tc.control, tc.target, now); err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", "table", tc.name+".golden")
			if *update {
				if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got := buf.String(); got != string(want) {
				t.Errorf("table differs from %s (run with -update to accept):\n--- got\n%s--- want\n%s", golden, got, want)
			}
		})
	}
}

func TestFormatStatusTableDoesNotReorderInput(t *testing.T) {
	in := []NodeStatus{{Node: "b", Role: RoleClient}, {Node: "a", Role: RoleServer}}
	if err := FormatStatusTable(&bytes.Buffer{}, in, Control{}, Target{}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if in[0].Node != "b" {
		t.Fatal("FormatStatusTable sorted the caller's slice")
	}
}

func TestAgo(t *testing.T) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s ago"},
		{999 * time.Millisecond, "0s ago"},
		{12 * time.Second, "12s ago"},
		{59 * time.Second, "59s ago"},
		{60 * time.Second, "1m00s ago"},
		{3*time.Minute + 5*time.Second, "3m05s ago"},
		{2*time.Hour + 10*time.Minute + 59*time.Second, "2h10m ago"},
		{3*24*time.Hour + 4*time.Hour, "3d04h ago"},
		{-5 * time.Second, "in 5s"},
	}
	for _, tc := range cases {
		if got := ago(now, now.Add(-tc.d)); got != tc.want {
			t.Errorf("ago(%s) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestCell(t *testing.T) {
	cases := []struct {
		in    string
		limit int
		want  string
	}{
		{"", 0, "-"},
		{"  ", 0, "-"},
		{"a\tb\nc", 0, "a b c"},
		{"abcdefgh", 5, "ab..."},
		{"äöüäöü", 5, "äö..."},
		{"abcde", 5, "abcde"},
	}
	for _, tc := range cases {
		if got := cell(tc.in, tc.limit); got != tc.want {
			t.Errorf("cell(%q, %d) = %q, want %q", tc.in, tc.limit, got, tc.want)
		}
	}
	if strings.Contains(cell("x\x00y", 0), "\x00") {
		t.Error("NUL survived")
	}
}
