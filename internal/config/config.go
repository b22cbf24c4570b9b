// Package config owns the upgrader agent's configuration: its HCL file format, its defaults, and the
// validation that turns a config mistake into an error saying what to fix before anything is touched.
//
// Layering follows consul-template's pattern: Default() gives every field a value, Parse reads a file
// on top of it, flags are applied by the CLI, and Finalize validates and fills derived values.
package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
)

// Restart modes understood by the agent.
const (
	RestartExec    = "exec"
	RestartSystemd = "systemd"
	RestartCommand = "command"
)

// DefaultReleaseURL is where HashiCorp publishes releases; a local mirror uses the same layout.
const DefaultReleaseURL = "https://releases.hashicorp.com"

// Config is the whole agent configuration.
type Config struct {
	Product  string `hcl:"product,optional"`
	NodeName string `hcl:"node_name,optional"` // default: the local agent's own node name
	StateDir string `hcl:"state_dir,optional"`
	KVPrefix string `hcl:"kv_prefix,optional"`
	LogLevel string `hcl:"log_level,optional"`

	Consul  *Consul  `hcl:"consul,block"`
	Binary  *Binary  `hcl:"binary,block"`
	Release *Release `hcl:"release,block"`
	Restart *Restart `hcl:"restart,block"`
	Lock    *Lock    `hcl:"lock,block"`
	Gates   *Gates   `hcl:"gates,block"`
}

// Consul says how to reach Consul. Empty fields fall back to consul/api's environment conventions
// (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT, CONSUL_CLIENT_CERT, ...).
type Consul struct {
	Address   string `hcl:"address,optional"`
	Scheme    string `hcl:"scheme,optional"`
	TokenFile string `hcl:"token_file,optional"`
	// SnapshotTokenFile holds a separate token used only for /v1/snapshot, which Consul allows only to
	// a token with acl = "write" (in effect a management token). Empty: the agent's own token.
	SnapshotTokenFile string   `hcl:"snapshot_token_file,optional"`
	CAFile            string   `hcl:"ca_file,optional"`
	CertFile          string   `hcl:"cert_file,optional"`
	KeyFile           string   `hcl:"key_file,optional"`
	TLSServerName     string   `hcl:"tls_server_name,optional"`
	FallbackAddrs     []string `hcl:"fallback_addrs,optional"`
}

// Binary is the live agent binary the upgrader replaces.
type Binary struct {
	Path string `hcl:"path"`
}

// Release says where releases come from and which keys may sign them.
type Release struct {
	URL               string   `hcl:"url,optional"`
	PublicKeys        []string `hcl:"public_keys,optional"` // armored key files; empty: HashiCorp's embedded key
	AllowInsecureHTTP bool     `hcl:"allow_insecure_http,optional"`
	OS                string   `hcl:"os,optional"`
	Arch              string   `hcl:"arch,optional"`
}

// Restart says how the agent is restarted.
type Restart struct {
	Mode        string   `hcl:"mode"`
	Args        []string `hcl:"args,optional"`    // exec: arguments after the binary
	Unit        string   `hcl:"unit,optional"`    // systemd
	Command     []string `hcl:"command,optional"` // command: argv
	KillTimeout string   `hcl:"kill_timeout,optional"`
	LogFile     string   `hcl:"log_file,optional"` // exec: where the agent's output goes (default: the upgrader's stderr)

	KillTimeoutDuration time.Duration
}

// Lock tunes the cluster-wide semaphore.
type Lock struct {
	TTL         string `hcl:"ttl,optional"`
	LockDelay   string `hcl:"lock_delay,optional"`
	ClientLimit int    `hcl:"client_limit,optional"`

	TTLDuration       time.Duration
	LockDelayDuration time.Duration
}

// Gates tunes the health gates.
type Gates struct {
	Stabilization     string `hcl:"stabilization,optional"`
	ConfirmTimeout    string `hcl:"confirm_timeout,optional"`
	Interval          string `hcl:"interval,optional"`
	AllowSingleServer bool   `hcl:"allow_single_server,optional"`

	StabilizationDuration  time.Duration // 0 until resolved when Stabilization is unset (see DefaultStabilization)
	ConfirmTimeoutDuration time.Duration
	IntervalDuration       time.Duration
}

// Default returns a configuration with every optional field set.
func Default() *Config {
	return &Config{
		Product:  "consul",
		StateDir: "/var/lib/upgrader",
		KVPrefix: "upgrader/",
		LogLevel: "info",
		Consul:   &Consul{},
		Binary:   &Binary{},
		Release:  &Release{URL: DefaultReleaseURL, OS: runtime.GOOS, Arch: runtime.GOARCH},
		Restart:  &Restart{KillTimeout: "30s"},
		// TTL 15s: Consul invalidates a session only after twice its TTL, so a holder that crashed frees
		// the lock within ~30s, while a renewal every 5s rides out an election or an agent restart.
		// Lock delay 5s: after an invalidation nobody may take the lock for 5s, long enough for a
		// crashed holder's half-finished restart to show up in the health gates of the next one.
		Lock: &Lock{TTL: "15s", LockDelay: "5s", ClientLimit: 1},
		// Stabilization unset: the agent uses the larger of DefaultStabilization and the cluster's
		// autopilot ServerStabilizationTime, so a restarted server has been a voter and in contact for
		// at least as long as autopilot itself demands.
		Gates: &Gates{ConfirmTimeout: "5m", Interval: "250ms"},
	}
}

// The platforms releases.hashicorp.com publishes builds for.
var (
	knownOS   = map[string]bool{"linux": true, "darwin": true, "windows": true, "freebsd": true, "netbsd": true, "openbsd": true, "solaris": true}
	knownArch = map[string]bool{"amd64": true, "arm64": true, "386": true, "arm": true, "ppc64le": true, "s390x": true}
)

// DefaultStabilization is the confirm window when gates.stabilization is unset and autopilot's own
// ServerStabilizationTime is shorter: autopilot's default.
const DefaultStabilization = 10 * time.Second

// ErrConfig prefixes every configuration error.
var ErrConfig = errors.New("config")

// ParseFile reads an HCL file on top of the defaults.
func ParseFile(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: failed to read %s: %w", ErrConfig, path, err)
	}
	return Parse(path, src)
}

// Parse reads HCL source on top of the defaults. filename is only used in error messages.
func Parse(filename string, src []byte) (*Config, error) {
	file, diags := hclparse.NewParser().ParseHCL(src, filename)
	if diags.HasErrors() {
		return nil, fmt.Errorf("%w: %s", ErrConfig, diags.Error())
	}
	var raw Config
	if diags := gohcl.DecodeBody(file.Body, nil, &raw); diags.HasErrors() {
		return nil, fmt.Errorf("%w: %s", ErrConfig, diagsText(diags))
	}
	c := Default()
	c.Merge(&raw)
	return c, nil
}

func diagsText(diags hcl.Diagnostics) string {
	var parts []string
	for _, d := range diags {
		s := d.Summary
		if d.Detail != "" {
			s += ": " + d.Detail
		}
		if d.Subject != nil {
			s = d.Subject.String() + ": " + s
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// Merge copies every field set in o over c.
func (c *Config) Merge(o *Config) {
	setStr(&c.Product, o.Product)
	setStr(&c.NodeName, o.NodeName)
	setStr(&c.StateDir, o.StateDir)
	setStr(&c.KVPrefix, o.KVPrefix)
	setStr(&c.LogLevel, o.LogLevel)
	if o.Consul != nil {
		setStr(&c.Consul.Address, o.Consul.Address)
		setStr(&c.Consul.Scheme, o.Consul.Scheme)
		setStr(&c.Consul.TokenFile, o.Consul.TokenFile)
		setStr(&c.Consul.SnapshotTokenFile, o.Consul.SnapshotTokenFile)
		setStr(&c.Consul.CAFile, o.Consul.CAFile)
		setStr(&c.Consul.CertFile, o.Consul.CertFile)
		setStr(&c.Consul.KeyFile, o.Consul.KeyFile)
		setStr(&c.Consul.TLSServerName, o.Consul.TLSServerName)
		if o.Consul.FallbackAddrs != nil {
			c.Consul.FallbackAddrs = o.Consul.FallbackAddrs
		}
	}
	if o.Binary != nil {
		setStr(&c.Binary.Path, o.Binary.Path)
	}
	if o.Release != nil {
		setStr(&c.Release.URL, o.Release.URL)
		if o.Release.PublicKeys != nil {
			c.Release.PublicKeys = o.Release.PublicKeys
		}
		c.Release.AllowInsecureHTTP = c.Release.AllowInsecureHTTP || o.Release.AllowInsecureHTTP
		setStr(&c.Release.OS, o.Release.OS)
		setStr(&c.Release.Arch, o.Release.Arch)
	}
	if o.Restart != nil {
		setStr(&c.Restart.Mode, o.Restart.Mode)
		if o.Restart.Args != nil {
			c.Restart.Args = o.Restart.Args
		}
		setStr(&c.Restart.Unit, o.Restart.Unit)
		if o.Restart.Command != nil {
			c.Restart.Command = o.Restart.Command
		}
		setStr(&c.Restart.KillTimeout, o.Restart.KillTimeout)
		setStr(&c.Restart.LogFile, o.Restart.LogFile)
	}
	if o.Lock != nil {
		setStr(&c.Lock.TTL, o.Lock.TTL)
		setStr(&c.Lock.LockDelay, o.Lock.LockDelay)
		if o.Lock.ClientLimit != 0 {
			c.Lock.ClientLimit = o.Lock.ClientLimit
		}
	}
	if o.Gates != nil {
		setStr(&c.Gates.Stabilization, o.Gates.Stabilization)
		setStr(&c.Gates.ConfirmTimeout, o.Gates.ConfirmTimeout)
		setStr(&c.Gates.Interval, o.Gates.Interval)
		c.Gates.AllowSingleServer = c.Gates.AllowSingleServer || o.Gates.AllowSingleServer
	}
}

func setStr(dst *string, v string) {
	if v != "" {
		*dst = v
	}
}

// Finalize validates the configuration and fills derived values. Every error names the setting and
// what to write instead.
func (c *Config) Finalize() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	if c.Product != "consul" {
		bad("product %q is not supported: write product = \"consul\"", c.Product)
	}
	if c.Binary.Path == "" {
		bad("binary.path is required: the absolute path of the live %s binary, e.g. /usr/local/bin/consul", c.Product)
	} else if !filepath.IsAbs(c.Binary.Path) {
		bad("binary.path %q must be absolute", c.Binary.Path)
	}
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		bad("state_dir %q must be an absolute directory path", c.StateDir)
	}
	if !strings.HasSuffix(c.KVPrefix, "/") || strings.HasPrefix(c.KVPrefix, "/") {
		bad("kv_prefix %q must end with \"/\" and not start with one, e.g. \"upgrader/\"", c.KVPrefix)
	}
	switch c.Restart.Mode {
	case RestartExec:
		if len(c.Restart.Args) == 0 {
			bad("restart.args is required for mode \"exec\": the agent's arguments, e.g. [\"agent\", \"-config-dir\", \"/etc/consul.d\"]")
		}
	case RestartSystemd:
		if c.Restart.Unit == "" {
			bad("restart.unit is required for mode \"systemd\", e.g. \"consul.service\"")
		}
	case RestartCommand:
		if len(c.Restart.Command) == 0 {
			bad("restart.command is required for mode \"command\": the argv that restarts the agent")
		}
	case "":
		bad("restart.mode is required: one of \"exec\", \"systemd\", \"command\"")
	default:
		bad("restart.mode %q is unknown: use \"exec\", \"systemd\" or \"command\"", c.Restart.Mode)
	}
	switch c.Consul.Scheme {
	case "", "http", "https":
	default:
		bad("consul.scheme %q is unknown: use \"https\" or \"http\"", c.Consul.Scheme)
	}
	if (c.Consul.CertFile == "") != (c.Consul.KeyFile == "") {
		bad("consul.cert_file and consul.key_file go together: set both (the client certificate and its key) or neither")
	}
	if !strings.HasPrefix(c.Release.URL, "https://") && !strings.HasPrefix(c.Release.URL, "http://") {
		bad("release.url %q must be an https:// URL", c.Release.URL)
	} else if strings.HasPrefix(c.Release.URL, "http://") && !c.Release.AllowInsecureHTTP {
		bad("release.url %q is plain http: use https, or set release.allow_insecure_http = true for a trusted local mirror (signatures are still verified)", c.Release.URL)
	}
	c.Release.URL = strings.TrimRight(c.Release.URL, "/")

	dur := func(name, v string, min time.Duration, dst *time.Duration) {
		d, err := time.ParseDuration(v)
		if err != nil {
			bad("%s %q is not a duration: write e.g. \"30s\"", name, v)
			return
		}
		if d < min {
			bad("%s %s is below the minimum %s", name, d, min)
			return
		}
		*dst = d
	}
	dur("restart.kill_timeout", c.Restart.KillTimeout, time.Second, &c.Restart.KillTimeoutDuration)
	// Consul accepts session TTLs from 10s to 24h.
	dur("lock.ttl", c.Lock.TTL, 10*time.Second, &c.Lock.TTLDuration)
	dur("lock.lock_delay", c.Lock.LockDelay, 0, &c.Lock.LockDelayDuration)
	if c.Gates.Stabilization != "" {
		dur("gates.stabilization", c.Gates.Stabilization, 0, &c.Gates.StabilizationDuration)
	}
	dur("gates.confirm_timeout", c.Gates.ConfirmTimeout, 10*time.Second, &c.Gates.ConfirmTimeoutDuration)
	dur("gates.interval", c.Gates.Interval, 50*time.Millisecond, &c.Gates.IntervalDuration)
	if c.Gates.ConfirmTimeoutDuration != 0 && c.Gates.ConfirmTimeoutDuration <= c.Gates.StabilizationDuration {
		bad("gates.confirm_timeout %s must be longer than gates.stabilization %s", c.Gates.ConfirmTimeoutDuration, c.Gates.StabilizationDuration)
	}
	switch strings.ToLower(c.LogLevel) {
	case "trace", "debug", "info", "warn", "error":
	default:
		bad("log_level %q is unknown: use trace, debug, info, warn or error", c.LogLevel)
	}
	if !knownOS[c.Release.OS] {
		bad("release.os %q is not a platform HashiCorp publishes: use e.g. \"linux\" (default: this machine's)", c.Release.OS)
	}
	if !knownArch[c.Release.Arch] {
		bad("release.arch %q is not an architecture HashiCorp publishes: use e.g. \"amd64\" or \"arm64\" (default: this machine's)", c.Release.Arch)
	}
	if c.Lock.ClientLimit < 1 {
		bad("lock.client_limit %d must be at least 1", c.Lock.ClientLimit)
	}
	return errors.Join(errs...)
}
