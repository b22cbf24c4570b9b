package testcluster

import (
	"fmt"
	"strings"
)

// Consul's default ports. Every node has its own loopback IP, so every node keeps the defaults.
const (
	PortHTTP    = 8500
	PortServer  = 8300
	PortSerfLAN = 8301
	PortSerfWAN = 8302
)

// agentConfig is everything that goes into one node's agent.hcl.
type agentConfig struct {
	Name            string
	Server          bool
	IP              string
	DataDir         string
	Datacenter      string
	LogLevel        string
	ServerIPs       []string
	BootstrapExpect int
	Extra           []string // HCL fragments appended verbatim, in order
}

// render returns the agent's HCL. Pure: no I/O.
func (a agentConfig) render() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# Written by internal/testcluster. One agent per loopback IP; Consul's default ports.")
	w("node_name  = %s", hclString(a.Name))
	w("datacenter = %s", hclString(a.Datacenter))
	w("data_dir   = %s", hclString(a.DataDir))
	w("server     = %t", a.Server)
	if a.Server {
		w("bootstrap_expect = %d", a.BootstrapExpect)
	}
	w("bind_addr      = %s", hclString(a.IP))
	w("advertise_addr = %s", hclString(a.IP))
	w("client_addr    = %s", hclString(a.IP))
	joins := make([]string, len(a.ServerIPs))
	for i, ip := range a.ServerIPs {
		joins[i] = hclString(ip)
	}
	w("retry_join     = [%s]", strings.Join(joins, ", "))
	w("retry_interval = \"1s\"")
	w("log_level            = %s", hclString(a.LogLevel))
	w("disable_update_check = true")
	w("enable_script_checks = false")
	w("ports {")
	w("  dns      = -1")
	w("  grpc     = -1")
	w("  grpc_tls = -1")
	w("}")
	w("performance {")
	w("  raft_multiplier = 1")
	w("}")
	if a.Server {
		w("autopilot {")
		w("  server_stabilization_time = \"2s\"")
		w("}")
	}
	for _, e := range a.Extra {
		if strings.TrimSpace(e) == "" {
			continue
		}
		w("")
		w("%s", strings.TrimRight(e, "\n"))
	}
	return b.String()
}

// hclString quotes s as an HCL string literal: Go-style escapes plus HCL's template markers ("${", "%{").
func hclString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c == '\t':
			b.WriteString(`\t`)
		case (c == '$' || c == '%') && i+1 < len(s) && s[i+1] == '{':
			b.WriteByte(c)
			b.WriteByte(c)
		case c < 0x20:
			fmt.Fprintf(&b, `\u%04x`, c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}
