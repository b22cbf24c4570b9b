// Command mirror builds (and optionally serves) a local signed release mirror in the releases.hashicorp.com
// layout (in <root>/releases/, the directory it serves) from the cached Consul test binaries, signed
// with a test key kept in <root>/keys/, outside the served tree.
//
//	go run ./scripts/mirror -root .demo/mirror [-serve 127.0.0.1:8600] [-versions 1.16.0,1.16.1]
//
// The private key never leaves <root>/keys/ (mode 0700/0600; keep <root> out of git). The public key is
// written to <root>/upgrader-test-key.asc for the upgrader's release.public_keys.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/hashicorp/go-hclog"

	"github.com/upgrader-dev/upgrader/internal/mirror"
	"github.com/upgrader-dev/upgrader/internal/release"
	"github.com/upgrader-dev/upgrader/internal/testbin"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

const (
	keyFile = "keys/signing.asc"
	// treeDir holds the served release tree, apart from keys/: the private key must never be served.
	treeDir       = "releases"
	publicKeyFile = "upgrader-test-key.asc"
	keyName       = "upgrader test release key"
	keyLifetime   = 365 * 24 * time.Hour
)

type options struct {
	root     string
	serve    string
	baseURL  string
	product  string
	versions []string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func parse(args []string, stderr io.Writer) (options, error) {
	var o options
	var versions string
	fs := flag.NewFlagSet("mirror", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.root, "root", "", "mirror directory (required); keys are kept in <root>/keys/")
	fs.StringVar(&o.serve, "serve", "", "serve the mirror on this loopback address (e.g. 127.0.0.1:8600) until interrupted")
	fs.StringVar(&o.baseURL, "base-url", "", "URL written into index.json (default: the -serve address, else http://127.0.0.1:8600)")
	fs.StringVar(&o.product, "product", "consul", "product name")
	fs.StringVar(&versions, "versions", "1.16.0,1.16.1", "comma-separated versions from the test binary cache")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.root == "" || fs.NArg() != 0 {
		fs.Usage()
		return o, errors.New("mirror: -root is required and no positional arguments are accepted")
	}
	for _, v := range strings.Split(versions, ",") {
		if v = strings.TrimSpace(v); v != "" {
			o.versions = append(o.versions, v)
		}
	}
	if len(o.versions) == 0 {
		return o, errors.New("mirror: -versions is empty")
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parse(args, stderr)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "build-mirror", Output: stderr, Level: hclog.Info})
	if err := build(ctx, o, log, stdout); err != nil {
		log.Error("failed", "error", err)
		return exitError
	}
	return exitOK
}

func build(ctx context.Context, o options, log hclog.Logger, stdout io.Writer) error {
	root, err := filepath.Abs(o.root)
	if err != nil {
		return fmt.Errorf("failed to resolve %s: %w", o.root, err)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("failed to create %s: %w", root, err)
	}
	binaries := map[string]string{}
	for _, v := range o.versions {
		p, err := testbin.Path(v)
		if err != nil {
			return fmt.Errorf("failed to find the %s %s test binary: %w", o.product, v, err)
		}
		binaries[v] = p
	}
	key, err := loadOrCreateKey(root, time.Now(), log)
	if err != nil {
		return err
	}
	pubPath := filepath.Join(root, publicKeyFile)
	if err := mirror.WritePublicKey(pubPath, key); err != nil {
		return err
	}

	var srv *mirror.Server
	base := o.baseURL
	if o.serve != "" {
		if srv, err = mirror.Serve(ctx, o.serve, filepath.Join(root, treeDir)); err != nil {
			return err
		}
		defer srv.Close()
		if base == "" {
			base = srv.URL()
		}
	}
	if base == "" {
		base = "http://127.0.0.1:8600"
	}
	res, err := mirror.BuildWith(mirror.Options{Root: filepath.Join(root, treeDir), BaseURL: base, Product: o.product, Binaries: binaries,
		Signers: []*openpgp.Entity{key}, Logger: log})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "mirror: %s %s built in %s under %s, signed by %s\n", o.product, strings.Join(o.versions, ","),
		res.Elapsed.Round(time.Millisecond), root, release.Fingerprint(key))
	fmt.Fprintf(stdout, "release {\n  url                 = %q\n  allow_insecure_http = true\n  public_keys         = [%q]\n}\n", base, pubPath)
	if srv == nil {
		return nil
	}
	fmt.Fprintf(stdout, "mirror: serving %s at %s (interrupt to stop)\n", root, srv.URL())
	<-ctx.Done()
	return srv.Close()
}

// loadOrCreateKey reads the mirror's signing key, generating one on first use or when it has expired.
func loadOrCreateKey(root string, now time.Time, log hclog.Logger) (*openpgp.Entity, error) {
	path := filepath.Join(root, keyFile)
	key, err := mirror.ReadPrivateKey(path)
	switch {
	case err == nil:
		exp := release.KeyExpiries(openpgp.EntityList{key})[0]
		if !exp.ExpiresWithin(now, 24*time.Hour) {
			return key, nil
		}
		log.Warn("test signing key expired or about to; generating a new one", "key", exp.String())
	case errors.Is(err, os.ErrNotExist):
	default:
		return nil, err
	}
	if key, err = mirror.GenerateKey(keyName, now, keyLifetime); err != nil {
		return nil, err
	}
	if err := mirror.WritePrivateKey(path, key); err != nil {
		return nil, err
	}
	log.Info("generated a test signing key", "fingerprint", release.Fingerprint(key), "private", path)
	return key, nil
}
