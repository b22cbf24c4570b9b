package release

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

const (
	hexA = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	hexB = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
)

func TestParseSHA256SUMS(t *testing.T) {
	cases := []struct {
		name    string
		in      string
		want    map[string]string
		wantErr string
	}{
		{name: "two lines", in: hexA + "  consul_1.16.1_linux_amd64.zip\n" + hexB + "  consul_1.16.1_linux_arm64.zip\n",
			want: map[string]string{"consul_1.16.1_linux_amd64.zip": hexA, "consul_1.16.1_linux_arm64.zip": hexB}},
		{name: "no trailing newline", in: hexA + "  a.zip", want: map[string]string{"a.zip": hexA}},
		{name: "upper-case hex normalised", in: strings.ToUpper(hexA) + "  a.zip\n", want: map[string]string{"a.zip": hexA}},
		{name: "empty", in: "", wantErr: "empty"},
		{name: "only newline", in: "\n", wantErr: "too short"},
		{name: "blank line inside", in: hexA + "  a.zip\n\n" + hexB + "  b.zip\n", wantErr: "line 2"},
		{name: "two trailing newlines", in: hexA + "  a.zip\n\n", wantErr: "line 2"},
		{name: "duplicate name", in: hexA + "  a.zip\n" + hexB + "  a.zip\n", wantErr: "duplicate"},
		{name: "duplicate identical line", in: hexA + "  a.zip\n" + hexA + "  a.zip\n", wantErr: "duplicate"},
		{name: "one space", in: hexA + " a.zip\n", wantErr: "two spaces"},
		{name: "three spaces", in: hexA + "   a.zip\n", wantErr: "invalid file name"},
		{name: "binary marker", in: hexA + " *a.zip\n", wantErr: "two spaces"},
		{name: "short hex", in: hexA[:63] + "  a.zip\n", wantErr: "64 hex"},
		{name: "long hex", in: hexA + "0  a.zip\n", wantErr: "two spaces"},
		{name: "non-hex", in: "g" + hexA[1:] + "  a.zip\n", wantErr: "64 hex"},
		{name: "CRLF", in: hexA + "  a.zip\r\n", wantErr: "invalid file name"},
		{name: "path in name", in: hexA + "  dir/a.zip\n", wantErr: "invalid file name"},
		{name: "traversal name", in: hexA + "  ..\n", wantErr: "invalid file name"},
		{name: "backslash", in: hexA + "  a\\b.zip\n", wantErr: "invalid file name"},
		{name: "space in name", in: hexA + "  a b.zip\n", wantErr: "invalid file name"},
		{name: "non-ascii", in: hexA + "  é.zip\n", wantErr: "invalid file name"},
		{name: "missing name", in: hexA + "  \n", wantErr: "too short"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSHA256SUMS([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				if !errors.Is(err, ErrChecksum) {
					t.Fatalf("err = %v, want ErrChecksum", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// FuzzParseSHA256SUMS checks that the parser never panics, and that whatever it accepts is well formed and
// round-trips: re-serialising the result parses to the same table.
func FuzzParseSHA256SUMS(f *testing.F) {
	f.Add([]byte(hexA + "  consul_1.16.1_linux_amd64.zip\n" + hexB + "  consul_1.16.1_linux_arm64.zip\n"))
	f.Add([]byte(hexA + "  a.zip"))
	f.Add([]byte(hexA + "  a.zip\n" + hexA + "  a.zip\n"))
	f.Add([]byte(hexA + " *a.zip\n"))
	f.Add([]byte("\n\n"))
	f.Add([]byte(hexA + "  ../../etc/passwd\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ParseSHA256SUMS(b)
		if err != nil {
			if !errors.Is(err, ErrChecksum) {
				t.Fatalf("error %v does not wrap ErrChecksum", err)
			}
			return
		}
		if len(got) == 0 {
			t.Fatalf("accepted %q with no entries", b)
		}
		var sb strings.Builder
		for name, sum := range got {
			if len(sum) != 64 || strings.ToLower(sum) != sum {
				t.Fatalf("bad sum %q", sum)
			}
			if err := checkFileName(name); err != nil {
				t.Fatalf("accepted bad name %q: %v", name, err)
			}
			sb.WriteString(sum + "  " + name + "\n")
		}
		again, err := ParseSHA256SUMS([]byte(sb.String()))
		if err != nil || fmt.Sprint(again) != fmt.Sprint(got) {
			t.Fatalf("round trip: %v, %v vs %v", err, again, got)
		}
	})
}
