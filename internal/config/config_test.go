package config

import (
	"strings"
	"testing"
	"time"
)

const minimal = `
binary { path = "/usr/local/bin/consul" }
restart {
  mode = "exec"
  args = ["agent", "-config-dir", "/etc/consul.d"]
}
`

func TestParseFinalize(t *testing.T) {
	cases := []struct {
		name    string
		src     string
		wantErr []string // substrings; empty means success
		check   func(t *testing.T, c *Config)
	}{
		{name: "minimal uses defaults", src: minimal, check: func(t *testing.T, c *Config) {
			if c.Release.URL != DefaultReleaseURL || c.KVPrefix != "upgrader/" || c.Lock.TTLDuration != 15*time.Second {
				t.Fatalf("defaults not applied: %+v %+v", c.Release, c.Lock)
			}
			if c.Gates.Stabilization != "" || c.Gates.StabilizationDuration != 0 {
				t.Fatalf("stabilization should be left to the agent (autopilot), got %q", c.Gates.Stabilization)
			}
		}},
		{name: "overrides", src: minimal + `
kv_prefix = "ops/upgrader/"
release {
  url = "http://127.0.0.1:8080/"
  allow_insecure_http = true
}
lock { ttl = "20s" }
gates { stabilization = "3s" }
`, check: func(t *testing.T, c *Config) {
			if c.KVPrefix != "ops/upgrader/" || c.Release.URL != "http://127.0.0.1:8080" || c.Lock.TTLDuration != 20*time.Second || c.Gates.StabilizationDuration != 3*time.Second {
				t.Fatalf("overrides not applied: %+v", c)
			}
		}},
		{name: "http refused", src: minimal + `release { url = "http://mirror.local" }`, wantErr: []string{"allow_insecure_http"}},
		{name: "missing binary", src: "restart {\nmode = \"systemd\"\nunit = \"consul\"\n}", wantErr: []string{"binary.path is required"}},
		{name: "bad mode", src: `binary { path = "/x" }
restart { mode = "reboot" }`, wantErr: []string{`restart.mode "reboot" is unknown`}},
		{name: "short ttl", src: minimal + `lock { ttl = "2s" }`, wantErr: []string{"lock.ttl 2s is below the minimum 10s"}},
		{name: "bad duration", src: minimal + `gates { stabilization = "ten" }`, wantErr: []string{`gates.stabilization "ten" is not a duration`}},
		{name: "prefix", src: minimal + `kv_prefix = "upgrader"`, wantErr: []string{`kv_prefix "upgrader" must end with "/"`}},
		{name: "unknown attribute", src: minimal + `bogus = 1`, wantErr: []string{"bogus"}},
		{name: "log level", src: minimal + `log_level = "verbose"`, wantErr: []string{`log_level "verbose" is unknown`}},
		{name: "os typo", src: minimal + `release {
  os = "linx"
}`, wantErr: []string{`release.os "linx"`}},
		{name: "syntax", src: `binary {`, wantErr: []string{"config:"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("test.hcl", []byte(tc.src))
			if err == nil {
				err = c.Finalize()
			}
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				tc.check(t, c)
				return
			}
			if err == nil {
				t.Fatalf("want error containing %q, got none", tc.wantErr)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
