package mirror

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/upgrader-dev/upgrader/internal/atomicfile"
)

// ZipEntry is one archive entry. Exactly one content source is used: LinkTarget (a symlink entry), Path
// (streamed from a file), Zeros (that many zero bytes, streamed), else Data.
type ZipEntry struct {
	Name       string
	Mode       fs.FileMode // permission bits; a directory when Name ends in "/"
	Data       []byte
	Path       string
	Zeros      int64
	LinkTarget string
	// DeclaredSize, when > 0, writes the entry raw with this uncompressed size in its headers regardless of
	// the real content: an archive whose headers lie about what it expands to.
	DeclaredSize uint64
}

// writeZip streams entries into a new zip at path (atomically) with fast compression (flate.BestSpeed), so
// a ~150 MB binary is never held in memory. Returns the zip's hex SHA-256 and size.
func writeZip(path string, entries []ZipEntry, modified time.Time) (string, int64, error) {
	var sum string
	var size int64
	err := atomicfile.Write(path, 0o644, func(w io.Writer) error {
		hw := newHashWriter(w)
		zw := zip.NewWriter(hw)
		zw.RegisterCompressor(zip.Deflate, func(out io.Writer) (io.WriteCloser, error) {
			return flate.NewWriter(out, flate.BestSpeed)
		})
		for _, e := range entries {
			if err := addEntry(zw, e, modified); err != nil {
				return fmt.Errorf("failed to add %q: %w", e.Name, err)
			}
		}
		if err := zw.Close(); err != nil {
			return err
		}
		sum, size = hw.sum(), hw.n
		return nil
	})
	return sum, size, err
}

func addEntry(zw *zip.Writer, e ZipEntry, modified time.Time) error {
	hdr := &zip.FileHeader{Name: e.Name, Method: zip.Deflate, Modified: modified.UTC()}
	switch {
	case e.LinkTarget != "":
		hdr.Method = zip.Store
		hdr.SetMode(fs.ModeSymlink | 0o777)
		w, err := zw.CreateHeader(hdr)
		if err != nil {
			return err
		}
		_, err = io.WriteString(w, e.LinkTarget)
		return err
	case len(e.Name) > 0 && e.Name[len(e.Name)-1] == '/':
		hdr.Method = zip.Store
		hdr.SetMode(fs.ModeDir | 0o755)
		_, err := zw.CreateHeader(hdr)
		return err
	}
	mode := e.Mode
	if mode == 0 {
		mode = 0o644
	}
	hdr.SetMode(mode.Perm())

	src, closeSrc, err := entrySource(e)
	if err != nil {
		return err
	}
	defer closeSrc()
	if e.DeclaredSize > 0 {
		return addRawEntry(zw, hdr, src, e.DeclaredSize)
	}
	w, err := zw.CreateHeader(hdr)
	if err != nil {
		return err
	}
	_, err = io.Copy(w, src)
	return err
}

func entrySource(e ZipEntry) (io.Reader, func(), error) {
	switch {
	case e.Path != "":
		f, err := os.Open(e.Path)
		if err != nil {
			return nil, nil, err
		}
		return f, func() { f.Close() }, nil
	case e.Zeros > 0:
		return io.LimitReader(zeroReader{}, e.Zeros), func() {}, nil
	default:
		return bytes.NewReader(e.Data), func() {}, nil
	}
}

// addRawEntry deflates src itself and writes it with headers claiming declared uncompressed bytes. The CRC
// is that of the real content, so only the size lies.
func addRawEntry(zw *zip.Writer, hdr *zip.FileHeader, src io.Reader, declared uint64) error {
	var comp bytes.Buffer
	fw, err := flate.NewWriter(&comp, flate.BestSpeed)
	if err != nil {
		return err
	}
	crc := crc32.NewIEEE()
	if _, err := io.Copy(io.MultiWriter(fw, crc), src); err != nil {
		return err
	}
	if err := fw.Close(); err != nil {
		return err
	}
	hdr.CRC32 = crc.Sum32()
	hdr.CompressedSize64 = uint64(comp.Len())
	hdr.UncompressedSize64 = declared
	w, err := zw.CreateRaw(hdr)
	if err != nil {
		return err
	}
	_, err = w.Write(comp.Bytes())
	return err
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// FlipByte inverts one byte of the file at path (offset < 0 counts from the end): a minimal tampering for
// tests.
func FlipByte(path string, offset int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("failed to open %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("failed to stat %s: %w", path, err)
	}
	if offset < 0 {
		offset += fi.Size()
	}
	if offset < 0 || offset >= fi.Size() {
		return fmt.Errorf("mirror: offset %d outside %s (%d bytes)", offset, path, fi.Size())
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, offset); err != nil {
		return fmt.Errorf("failed to read %s: %w", path, err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, offset); err != nil {
		return fmt.Errorf("failed to write %s: %w", path, err)
	}
	return f.Close()
}
