package testcluster

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/upgrader-dev/upgrader/internal/testbin"
)

func TestRender(t *testing.T) {
	base := agentConfig{
		Name: "s1", IP: "127.0.10.1", DataDir: "/tmp/d", Datacenter: "dc1", LogLevel: "info",
		ServerIPs: []string{"127.0.10.1", "127.0.10.2", "127.0.10.3"},
	}
	server := base
	server.Server, server.BootstrapExpect = true, 3
	client := base
	client.Name, client.IP = "c1", "127.0.10.4"
	extra := server
	extra.Extra = []string{"", "acl {\n  enabled = true\n}\n", "  "}

	tests := []struct {
		name    string
		in      agentConfig
		want    []string
		notWant []string
	}{
		{"server", server, []string{
			`node_name  = "s1"`, `server     = true`, `bootstrap_expect = 3`,
			`bind_addr      = "127.0.10.1"`, `advertise_addr = "127.0.10.1"`, `client_addr    = "127.0.10.1"`,
			`retry_join     = ["127.0.10.1", "127.0.10.2", "127.0.10.3"]`,
			"dns      = -1", "grpc     = -1", "raft_multiplier = 1", `server_stabilization_time = "2s"`,
			"disable_update_check = true", "enable_script_checks = false", `log_level            = "info"`,
		}, []string{"leave_on_terminate", "acl"}},
		{"client", client, []string{
			`node_name  = "c1"`, `server     = false`, `bind_addr      = "127.0.10.4"`,
			`retry_join     = ["127.0.10.1", "127.0.10.2", "127.0.10.3"]`,
		}, []string{"bootstrap_expect", "autopilot"}},
		{"extra appended, blanks skipped", extra, []string{"\nacl {\n  enabled = true\n}\n"}, []string{"\n  \n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.in.render()
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("missing %q in:\n%s", w, got)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(got, w) {
					t.Errorf("unexpected %q in:\n%s", w, got)
				}
			}
		})
	}
	if got := extra.render(); !strings.HasSuffix(got, "}\n") {
		t.Errorf("extra config should end the file, got:\n%s", got)
	}
}

func TestHCLString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", `"plain"`},
		{`a"b\c`, `"a\"b\\c"`},
		{"line\nbreak\ttab", `"line\nbreak\ttab"`},
		{"${x} %{y} $z %", `"$${x} %%{y} $z %"`},
		{"\x01", `"\u0001"`},
		{"/tmp/Test Name/ü", `"/tmp/Test Name/ü"`},
	}
	for _, tt := range tests {
		if got := hclString(tt.in); got != tt.want {
			t.Errorf("hclString(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestOptionsFinalize(t *testing.T) {
	tests := []struct {
		name    string
		in      Options
		wantErr bool
	}{
		{"defaults", Options{Block: 10}, false},
		{"no block", Options{}, true},
		{"block too big", Options{Block: 255}, true},
		{"negative clients", Options{Block: 10, Clients: -1}, true},
		{"too many nodes", Options{Block: 10, Servers: 5, Clients: 250}, true},
		{"254 nodes fit", Options{Block: 10, Servers: 4, Clients: 250}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.in
			err := o.finalize()
			if (err != nil) != tt.wantErr {
				t.Fatalf("finalize() error = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && (o.Servers == 0 || o.Version == "" || o.StopTimeout == 0 || o.Datacenter == "") {
				t.Errorf("defaults not applied: %+v", o)
			}
		})
	}
}

// TestPlanAndConfigFiles lays out a cluster without starting it and checks names, addresses and files.
func TestPlanAndConfigFiles(t *testing.T) {
	c, err := Create(t, Options{Block: 10, Servers: 3, Clients: 2, Binary: "/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ name, role, ip string }{
		{"s1", RoleServer, "127.0.10.1"}, {"s2", RoleServer, "127.0.10.2"}, {"s3", RoleServer, "127.0.10.3"},
		{"c1", RoleClient, "127.0.10.4"}, {"c2", RoleClient, "127.0.10.5"},
	}
	nodes := c.Nodes()
	if len(nodes) != len(want) || len(c.Servers()) != 3 || len(c.Clients()) != 2 {
		t.Fatalf("got %d nodes (%d servers, %d clients)", len(nodes), len(c.Servers()), len(c.Clients()))
	}
	for i, w := range want {
		n := nodes[i]
		if n.Name != w.name || n.Role != w.role || n.IP != w.ip || n.HTTPAddr != w.ip+":8500" || n.RPCAddr != w.ip+":8300" {
			t.Errorf("node %d = %s %s %s %s, want %v", i, n.Name, n.Role, n.IP, n.HTTPAddr, w)
		}
		if c.Node(w.name) != n || c.NodeByAddr(w.ip+":8300") != n {
			t.Errorf("lookup of %s failed", w.name)
		}
		b, err := os.ReadFile(filepath.Join(n.ConfigDir, "agent.hcl"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), `data_dir   = "`+n.DataDir+`"`) {
			t.Errorf("%s config lacks its data dir:\n%s", n.Name, b)
		}
		if got := n.AgentArgs(); strings.Join(got, " ") != "agent -config-dir "+n.ConfigDir {
			t.Errorf("AgentArgs() = %v", got)
		}
	}
	if c.Node("s9") != nil || c.NodeByAddr("127.0.11.1") != nil {
		t.Error("lookup of unknown node should be nil")
	}
	n := c.Node("s2")
	n.SetBinary("/bin/false")
	if n.Binary() != "/bin/false" || c.Node("s1").Binary() != "/bin/true" {
		t.Error("SetBinary should change only that node")
	}
}

// TestConfigValidates runs each real consul's own `consul validate` over a generated config dir.
func TestConfigValidates(t *testing.T) {
	if testing.Short() {
		t.Skip("needs real consul binaries")
	}
	for _, v := range []string{"1.16.0", "1.16.1"} {
		t.Run(v, func(t *testing.T) {
			bin := testbin.Require(t, v)
			c, err := Create(t, Options{Block: 10, Servers: 3, Clients: 1, Binary: bin})
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range c.Nodes() {
				out, err := exec.Command(bin, "validate", n.ConfigDir).CombinedOutput()
				if err != nil {
					t.Errorf("consul %s validate %s: %v\n%s", v, n.Name, err, out)
				}
			}
		})
	}
}
