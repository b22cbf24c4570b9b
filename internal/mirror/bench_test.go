package mirror_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"

	"github.com/upgrader-dev/upgrader/internal/mirror"
	"github.com/upgrader-dev/upgrader/internal/release"
	"github.com/upgrader-dev/upgrader/internal/testbin"
)

// BenchmarkFetchVerifyRealConsul measures what every node pays before it may take the lock: download
// the real consul 1.16.1 release from a loopback mirror, verify the signature and the checksum, and
// extract the binary (fsynced) into a fresh cache. Bytes/s are of the extracted binary.
func BenchmarkFetchVerifyRealConsul(b *testing.B) {
	bin, err := testbin.Path("1.16.1")
	if err != nil {
		b.Skipf("consul 1.16.1 test binary not built (make testbin): %v", err)
	}
	fi, err := os.Stat(bin)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	key := genKey(b, "bench", time.Now().Add(-time.Minute), 0)
	root := b.TempDir()
	srv, err := mirror.Serve(ctx, "127.0.0.1:0", root)
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	if err := mirror.Build(root, srv.URL(), "consul", map[string]string{"1.16.1": bin}, []*openpgp.Entity{key}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(fi.Size())
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		src := &release.Source{BaseURL: srv.URL(), Keyring: openpgp.EntityList{key}, AllowInsecureHTTP: true, CacheDir: b.TempDir()}
		if _, err := src.Fetch(ctx, "consul", "1.16.1", "linux", "amd64"); err != nil {
			b.Fatal(err)
		}
	}
}
