package rollout

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseTarget(t *testing.T) {
	at := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		in   string
		want Target
	}{
		{"bare", "1.16.1", Target{Version: "1.16.1", ClientConcurrency: 1}},
		{"bare with v and newline", "  v1.16.1\n", Target{Version: "1.16.1", ClientConcurrency: 1}},
		{"prerelease", "1.17.0-rc1", Target{Version: "1.17.0-rc1", ClientConcurrency: 1}},
		{"dotted prerelease", "v1.17.0-beta.2", Target{Version: "1.17.0-beta.2", ClientConcurrency: 1}},
		{"json minimal", `{"version":"1.16.1"}`, Target{Version: "1.16.1", ClientConcurrency: 1}},
		{"json v prefix", `{"version":" v1.16.1 "}`, Target{Version: "1.16.1", ClientConcurrency: 1}},
		{"json full", `{"version":"1.16.1","client_concurrency":3,"allow_downgrade":true,"set_by":"alice","reason":"CVE fix","set_at":"2024-05-01T12:00:00Z"}`,
			Target{Version: "1.16.1", ClientConcurrency: 3, AllowDowngrade: true, SetBy: "alice", Reason: "CVE fix", SetAt: at}},
		{"json nulls are absent", `{"version":"1.16.1","client_concurrency":null,"reason":null}`, Target{Version: "1.16.1", ClientConcurrency: 1}},
		{"json offset time", `{"version":"1.16.1","set_at":"2024-05-01T14:00:00+02:00"}`, Target{Version: "1.16.1", ClientConcurrency: 1, SetAt: at}},
		{"json whitespace", "\n {\"version\": \"1.16.1\"} \n", Target{Version: "1.16.1", ClientConcurrency: 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseTarget([]byte(tc.in))
			if err != nil {
				t.Fatalf("ParseTarget(%q): %v", tc.in, err)
			}
			if !got.Equal(tc.want) {
				t.Fatalf("ParseTarget(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseTargetErrors(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want []string // substrings of the error, besides the "target: " prefix
		is   error
	}{
		{"empty", "", nil, ErrNoTarget},
		{"blank", " \n\t", nil, ErrNoTarget},
		{"short", "1.16", []string{`"1.16" is not a full version: write e.g. 1.16.1`}, nil},
		{"major only", "1", []string{"not a full version", "1.0.1"}, nil},
		{"four parts", "1.16.1.2", []string{"4 numeric parts", "major.minor.patch"}, nil},
		{"metadata", "1.16.1+ent", []string{`build metadata "+ent"`, "e.g. 1.16.1"}, nil},
		{"garbage", "latest", []string{`"latest" is not a version`, "write e.g. 1.16.1"}, nil},
		{"prerelease without dash", "1.16.1beta", []string{"is not a version"}, nil},
		{"two words", "1.16.1 1.16.2", []string{"whitespace"}, nil},
		{"quoted", `"1.16.1"`, []string{"quoted", "without quotes"}, nil},
		{"array", `["1.16.1"]`, []string{"array"}, nil},
		{"bad json", `{"version":`, []string{"invalid JSON", `{"version":"1.16.1"`}, nil},
		{"trailing", `{"version":"1.16.1"} {}`, []string{"trailing data"}, nil},
		{"unknown field", `{"version":"1.16.1","concurrency":2}`, []string{`unknown field "concurrency"`, "client_concurrency"}, nil},
		{"case typo", `{"Version":"1.16.1"}`, []string{`unknown field "Version"`, `did you mean "version"`}, nil},
		{"dash typo", `{"version":"1.16.1","allow-downgrade":true}`, []string{`did you mean "allow_downgrade"`}, nil},
		{"no version", `{"client_concurrency":2}`, []string{`no "version"`}, nil},
		{"version number", `{"version":1.16}`, []string{"version 1.16 is not a string"}, nil},
		{"json short version", `{"version":"1.16"}`, []string{"not a full version"}, nil},
		{"zero concurrency", `{"version":"1.16.1","client_concurrency":0}`, []string{"client_concurrency 0 is not a whole number >= 1"}, nil},
		{"negative concurrency", `{"version":"1.16.1","client_concurrency":-2}`, []string{">= 1"}, nil},
		{"fractional concurrency", `{"version":"1.16.1","client_concurrency":1.5}`, []string{">= 1"}, nil},
		{"string concurrency", `{"version":"1.16.1","client_concurrency":"2"}`, []string{"not a number"}, nil},
		{"huge concurrency", `{"version":"1.16.1","client_concurrency":1e99}`, []string{">= 1"}, nil},
		{"string bool", `{"version":"1.16.1","allow_downgrade":"yes"}`, []string{"allow_downgrade", "true or false"}, nil},
		{"bad time", `{"version":"1.16.1","set_at":"yesterday"}`, []string{"set_at", "RFC 3339", "2024-05-01T12:00:00Z"}, nil},
		{"reason not string", `{"version":"1.16.1","reason":42}`, []string{"reason 42 is not a string"}, nil},
		{"too large", strings.Repeat(" ", maxTargetSize+1), []string{"too large"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseTarget([]byte(tc.in))
			if err == nil {
				t.Fatalf("ParseTarget(%q) = %+v, want an error", tc.in, got)
			}
			if !strings.HasPrefix(err.Error(), "target: ") {
				t.Errorf("error %q does not start with %q", err, "target: ")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q is not %v", err, tc.is)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestTargetJSONRoundTrip(t *testing.T) {
	in := Target{Version: "1.16.1", ClientConcurrency: 2, AllowDowngrade: true, SetBy: "bob <ops>", Reason: "line\nbreak & \"quotes\"",
		SetAt: time.Date(2024, 5, 1, 12, 0, 0, 5, time.FixedZone("", 3600))}
	b, err := in.JSON()
	if err != nil {
		t.Fatal(err)
	}
	out, err := ParseTarget(b)
	if err != nil {
		t.Fatalf("ParseTarget(%s): %v", b, err)
	}
	if !out.Equal(in) {
		t.Fatalf("round trip: got %+v, want %+v (json %s)", out, in, b)
	}
	min, _ := Target{Version: "1.16.1", ClientConcurrency: 1}.JSON()
	if got, want := string(min), `{"version":"1.16.1","client_concurrency":1}`; got != want {
		t.Errorf("minimal JSON = %s, want %s", got, want)
	}
}

func TestTargetValidate(t *testing.T) {
	got, err := Target{Version: "v1.16.1"}.Validate()
	if err != nil || got.Version != "1.16.1" || got.ClientConcurrency != 1 {
		t.Fatalf("Validate = %+v, %v", got, err)
	}
	if _, err := (Target{Version: "1.16.1", ClientConcurrency: -1}).Validate(); err == nil {
		t.Fatal("negative concurrency accepted")
	}
	if _, err := (Target{}).Validate(); err == nil || !strings.HasPrefix(err.Error(), "target: ") {
		t.Fatalf("empty version: %v", err)
	}
}

func TestTargetString(t *testing.T) {
	cases := []struct {
		in   Target
		want string
	}{
		{Target{}, "none"},
		{Target{Version: "1.16.1", ClientConcurrency: 1}, "1.16.1"},
		{Target{Version: "1.16.1", ClientConcurrency: 3, AllowDowngrade: true, SetBy: "alice", Reason: "CVE",
			SetAt: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)},
			`1.16.1 (clients 3 at a time, downgrade allowed, set by alice, at 2024-05-01T12:00:00Z, "CVE")`},
	}
	for _, tc := range cases {
		if got := tc.in.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}

// FuzzParseTarget: ParseTarget never panics, every error is prefixed, and anything accepted round-trips
// through JSON() back to an equal Target.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{
		"1.16.1", "v1.16.1\n", "1.17.0-rc1", "1.16", "1.16.1+ent", "", "{}", `{"version":"1.16.1"}`,
		`{"version":"1.16.1","client_concurrency":3,"allow_downgrade":true,"set_by":"a","reason":"r","set_at":"2024-05-01T12:00:00.5+02:00"}`,
		`{"version":"1.16.1","set_at":"0000-01-01T00:00:00-23:59"}`, `{"version":"1.16.1","reason":"\ud800"}`,
		`{"version":"1.16.1","x":1}`, `"1.16.1"`, "[1]", "01.016.0001-01",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tg, err := ParseTarget(b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "target: ") {
				t.Fatalf("error without prefix: %q", err)
			}
			return
		}
		if tg.ClientConcurrency < 1 {
			t.Fatalf("accepted concurrency %d", tg.ClientConcurrency)
		}
		js, err := tg.JSON()
		if err != nil {
			t.Fatalf("accepted %q but JSON() failed: %v", b, err)
		}
		back, err := ParseTarget(js)
		if err != nil {
			t.Fatalf("accepted %q but not its JSON %s: %v", b, js, err)
		}
		if !back.Equal(tg) {
			t.Fatalf("round trip of %q: %+v != %+v", b, back, tg)
		}
		if again, err := NormalizeVersion(tg.Version); err != nil || again != tg.Version {
			t.Fatalf("version %q is not normalized: %q, %v", tg.Version, again, err)
		}
	})
}
