// Command upgrader runs next to a Consul agent and upgrades it when an operator writes a target version
// into Consul KV, one server at a time, the leader last, releasing the cluster-wide lock only after a
// healthy leader is confirmed.
package main

import "os"

func main() {
	cli := NewCLI(os.Stdout, os.Stderr)
	os.Exit(cli.Run(os.Args[1:]))
}
