package main

import (
	"context"
	"fmt"
)

func notYet(name string) func(context.Context, *CLI, []string) int {
	return func(_ context.Context, c *CLI, _ []string) int {
		fmt.Fprintf(c.errw, "upgrader %s: not implemented yet\n", name)
		return ExitError
	}
}

var (
	runRelease = notYet("release")
)
