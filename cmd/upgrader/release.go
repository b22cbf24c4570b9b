package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/upgrader-dev/upgrader/internal/config"
	"github.com/upgrader-dev/upgrader/internal/release"
	"github.com/upgrader-dev/upgrader/internal/rollout"
)

const releaseUsage = `Usage: upgrader release fetch [options] <product> <version>

Fetches and verifies a release exactly as the agent does before it takes the lock: index.json, the
OpenPGP signature over SHA256SUMS with the pinned keys, then the zip's checksum, then a safe extraction of
the one binary. Use it to check a mirror or a new key before writing a target.`

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func runRelease(ctx context.Context, c *CLI, args []string) int {
	if len(args) == 0 || args[0] != "fetch" {
		fmt.Fprintln(c.errw, releaseUsage)
		return ExitUsage
	}
	fs := flag.NewFlagSet("release fetch", flag.ContinueOnError)
	fs.SetOutput(c.errw)
	fs.Usage = func() { fmt.Fprintln(c.errw, releaseUsage+"\n\nOptions:"); fs.PrintDefaults() }
	url := fs.String("url", config.DefaultReleaseURL, "release site or mirror")
	var keys stringList
	fs.Var(&keys, "public-key", "armored public key file to pin (repeatable; default: HashiCorp's embedded key)")
	insecure := fs.Bool("allow-insecure-http", false, "permit an http:// mirror (signatures are still verified)")
	dir := fs.String("dir", "", "cache directory for the verified release (default: a temporary directory, removed afterwards)")
	goos := fs.String("os", runtime.GOOS, "build os")
	goarch := fs.String("arch", runtime.GOARCH, "build arch")
	timeout := fs.Duration("timeout", 10*time.Minute, "deadline for the whole fetch")
	pos, err := parseArgs(fs, args[1:])
	if err != nil {
		return exitForParse(err)
	}
	if len(pos) != 2 {
		fmt.Fprintf(c.errw, "upgrader release fetch: want a product and a version (e.g. consul 1.16.1), got %d argument(s)\n\n", len(pos))
		fs.Usage()
		return ExitUsage
	}
	product := pos[0]
	version, err := rollout.NormalizeVersion(pos[1])
	if err != nil {
		fmt.Fprintf(c.errw, "upgrader release fetch: %v\n", err)
		return ExitUsage
	}
	keyring, err := loadKeyring(keys, "-public-key")
	if err != nil {
		fmt.Fprintf(c.errw, "upgrader release fetch: %v\n", err)
		return ExitUsage
	}
	cache := *dir
	if cache == "" {
		if cache, err = os.MkdirTemp("", "upgrader-release-"); err != nil {
			fmt.Fprintf(c.errw, "upgrader release fetch: %v\n", err)
			return ExitError
		}
		defer os.RemoveAll(cache)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	src := &release.Source{BaseURL: strings.TrimRight(*url, "/"), Keyring: keyring, AllowInsecureHTTP: *insecure, CacheDir: cache,
		Logger: hclog.New(&hclog.LoggerOptions{Name: "upgrader", Level: hclog.Info, Output: c.errw})}
	art, err := src.Fetch(ctx, product, version, *goos, *goarch)
	if err != nil {
		fmt.Fprintf(c.errw, "upgrader release fetch: %v\n", err)
		return ExitError
	}
	fmt.Fprintf(c.out, "verified %s %s %s/%s\n  zip sha256:    %s\n  signed by:     %s (issuer key %s)\n  binary sha256: %s\n",
		art.Product, art.Version, art.OS, art.Arch, art.ZipSHA256, art.SignerFingerprint, art.SignedByKeyID, art.BinarySHA256)
	if *dir != "" {
		fmt.Fprintf(c.out, "  binary:        %s\n", art.BinaryPath)
	}
	return ExitOK
}
