package main

import (
	"errors"
	"flag"
)

// parseArgs parses flags wherever they appear, before or after the positional arguments (so both
// `rollout status -watch consul` and `rollout status consul -watch` work), and returns the positionals.
// "--" ends flag parsing. A -h/-help request returns flag.ErrHelp.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if rest[0] == "--" {
			return append(pos, rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// exitForParse maps a flag parsing error to an exit code: asking for help is not a failure.
func exitForParse(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	return ExitUsage
}
