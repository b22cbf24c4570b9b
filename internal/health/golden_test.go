package health

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*/verdict.golden from the current gates")

// goldenInput is testdata/<case>/input.json: which gate judges observation.json, with what.
type goldenInput struct {
	// Gate is "preflight", "server-confirm" or "client-confirm".
	Gate     string    `json:"gate"`
	Policy   Policy    `json:"policy"`
	Baseline Baseline  `json:"baseline"`
	Now      time.Time `json:"now"`
}

func (in goldenInput) judge(t *testing.T, obs Observation) Verdict {
	t.Helper()
	switch in.Gate {
	case "preflight":
		return Preflight(obs, in.Policy)
	case "server-confirm":
		return ServerConfirm(obs, in.Baseline, in.Now)
	case "client-confirm":
		return ClientConfirm(obs, in.Baseline, in.Now)
	}
	t.Fatalf("unknown gate %q", in.Gate)
	return Verdict{}
}

// TestGolden judges every testdata/<case>/observation.json (most were captured from real Consul 1.16
// clusters by the integration test with -health.capture) and compares with verdict.golden.
func TestGolden(t *testing.T) {
	dirs, err := filepath.Glob(filepath.Join("testdata", "*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 {
		t.Fatal("no golden cases in testdata")
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			var obs Observation
			var in goldenInput
			readJSON(t, filepath.Join(dir, "observation.json"), &obs)
			readJSON(t, filepath.Join(dir, "input.json"), &in)
			got := in.judge(t, obs)
			b, err := json.MarshalIndent(got, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			b = append(b, '\n')
			golden := filepath.Join(dir, "verdict.golden")
			if *update {
				if err := os.WriteFile(golden, b, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if string(want) != string(b) {
				t.Errorf("verdict differs from %s:\ngot:\n%s\nwant:\n%s", golden, b, want)
			}
		})
	}
}

func readJSON(t *testing.T, path string, v interface{}) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
