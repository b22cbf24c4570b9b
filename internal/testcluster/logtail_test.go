package testcluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLastLines(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"", 3, ""},
		{"a\nb\nc\n", 2, "b\nc"},
		{"a\nb\nc", 2, "b\nc"},
		{"a\nb\nc\n", 3, "a\nb\nc"},
		{"a\nb\nc\n", 10, "a\nb\nc"},
		{"a\nb\n", 0, ""},
		{"one line", 1, "one line"},
		{"a\n\nb\n", 2, "\nb"},
	}
	for _, tt := range tests {
		if got := lastLines([]byte(tt.in), tt.n); got != tt.want {
			t.Errorf("lastLines(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}

func TestTailFileLarge(t *testing.T) {
	p := filepath.Join(t.TempDir(), "big.log")
	var b strings.Builder
	for b.Len() < 3*tailWindow {
		b.WriteString("filler line of a large log file\n")
	}
	b.WriteString("second to last\nlast\n")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := tailFile(p, 2)
	if err != nil || got != "second to last\nlast" {
		t.Fatalf("tailFile = %q, %v", got, err)
	}
	if _, err := tailFile(filepath.Join(t.TempDir(), "missing"), 2); err == nil {
		t.Fatal("want an error for a missing file")
	}
}
