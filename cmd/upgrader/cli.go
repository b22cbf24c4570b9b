package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/upgrader-dev/upgrader/internal/buildinfo"
)

// Exit codes.
const (
	ExitOK          = 0
	ExitError       = 1 // the command ran and failed
	ExitUsage       = 2 // bad flags or arguments
	ExitInterrupted = 130
)

// CLI is the command-line front end; main is the only caller of os.Exit.
type CLI struct {
	out, errw io.Writer
}

// NewCLI returns a CLI writing to the given streams.
func NewCLI(out, errw io.Writer) *CLI { return &CLI{out: out, errw: errw} }

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, c *CLI, args []string) int
}

func commands() []command {
	return []command{
		{"agent", "run next to one agent: watch the target in KV and upgrade this node safely", runAgent},
		{"rollout", "operator side: start, status, pause, resume, halt a rollout", runRollout},
		{"release", "fetch and verify a release the way the agent does (signature, checksum, extraction)", runRelease},
		{"version", "print the upgrader's version", runVersion},
	}
}

// Run executes one command line and returns the exit code.
func (c *CLI) Run(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		c.usage()
		if len(args) == 0 {
			return ExitUsage
		}
		return ExitOK
	}
	if args[0] == "-v" || args[0] == "--version" {
		args[0] = "version"
	}
	for _, cmd := range commands() {
		if cmd.name == args[0] {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return cmd.run(ctx, c, args[1:])
		}
	}
	fmt.Fprintf(c.errw, "upgrader: unknown command %q\n\n", args[0])
	c.usage()
	return ExitUsage
}

func (c *CLI) usage() {
	fmt.Fprintf(c.errw, "Usage: upgrader <command> [options]\n\nCommands:\n")
	for _, cmd := range commands() {
		fmt.Fprintf(c.errw, "  %-9s %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprintf(c.errw, "\nRun 'upgrader <command> -h' for a command's options.\n")
}

func runVersion(_ context.Context, c *CLI, args []string) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(c.errw)
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	fmt.Fprintf(c.out, "upgrader %s\n", buildinfo.Version)
	return ExitOK
}
