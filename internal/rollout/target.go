package rollout

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	version "github.com/hashicorp/go-version"
)

// ErrNoTarget means the target key is missing or empty: there is nothing to roll out.
var ErrNoTarget = errors.New("target: no target version set: write a version, e.g. `consul kv put upgrader/consul/target 1.16.1`")

// DefaultClientConcurrency is how many clients upgrade at once when the target does not say: one, the
// slowest and safest choice; an operator raises it explicitly for large fleets.
const DefaultClientConcurrency = 1

// maxTargetSize bounds what ParseTarget reads: a target is a version and a few words of policy, so anything
// this large is a mistake (a wrong file put into the key), not a target.
const maxTargetSize = 64 << 10

// Target is the desired state an operator writes into `<prefix><product>/target`.
//
// Version is always normalized (no leading "v", no build metadata). ClientConcurrency is always >= 1 once
// the Target came from ParseTarget. Compare Targets with Equal (SetAt is a time.Time).
type Target struct {
	// Version is the release every node should run, e.g. "1.16.1" or "1.17.0-rc1".
	Version string `json:"version"`
	// ClientConcurrency is how many client agents may restart at the same time (servers are always one).
	ClientConcurrency int `json:"client_concurrency"`
	// AllowDowngrade permits a target lower than a node's running version; without it such a node
	// refuses the target.
	AllowDowngrade bool `json:"allow_downgrade,omitempty"`
	// SetBy and Reason say who asked for this target and why; they are shown in status and history.
	SetBy  string `json:"set_by,omitempty"`
	Reason string `json:"reason,omitempty"`
	// SetAt is when the target was written.
	SetAt time.Time `json:"set_at,omitzero"`
}

// targetFields lists the JSON fields ParseTarget accepts, for the unknown-field error.
var targetFields = []string{"version", "client_concurrency", "allow_downgrade", "set_by", "reason", "set_at"}

// ParseTarget reads the content of the target key. It accepts a bare version ("1.16.1", optional leading
// "v", surrounding whitespace) or a JSON object with the fields of Target. Unknown JSON fields are errors,
// so that a typo does not silently drop a policy. Empty content is ErrNoTarget. Every error starts with
// "target: " and says what to write instead.
func ParseTarget(b []byte) (Target, error) {
	if len(b) > maxTargetSize {
		return Target{}, fmt.Errorf("target: %d bytes is too large for a target: write a version such as 1.16.1 or a small JSON object", len(b))
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return Target{}, ErrNoTarget
	}
	switch s[0] {
	case '{':
		return parseTargetJSON([]byte(s))
	case '[':
		return Target{}, errors.New(`target: a JSON array is not a target: write a version such as 1.16.1 or an object such as {"version":"1.16.1"}`)
	case '"':
		return Target{}, fmt.Errorf("target: %s is quoted: write the bare version without quotes, e.g. 1.16.1", quoteShort(s))
	}
	v, err := NormalizeVersion(s)
	if err != nil {
		return Target{}, err
	}
	return Target{Version: v, ClientConcurrency: DefaultClientConcurrency}, nil
}

// NormalizeVersion validates a release version for a target and returns it without a leading "v". It
// requires all three numeric segments, allows a prerelease ("1.17.0-rc1") and rejects build metadata.
func NormalizeVersion(s string) (string, error) {
	if s == "" {
		return "", errors.New("target: version is empty: write a version, e.g. 1.16.1")
	}
	if strings.ContainsAny(s, " \t\r\n") {
		return "", fmt.Errorf("target: %s contains whitespace: write a single version, e.g. 1.16.1", quoteShort(s))
	}
	v, err := version.NewSemver(s)
	if err != nil {
		return "", fmt.Errorf("target: %s is not a version: write e.g. 1.16.1 (or 1.17.0-rc1 for a prerelease)", quoteShort(s))
	}
	if md := v.Metadata(); md != "" {
		return "", fmt.Errorf("target: %s has build metadata %q: write the version without it, e.g. %s", quoteShort(s), "+"+md, v.Core().String())
	}
	core := strings.TrimPrefix(s, "v")
	if i := strings.IndexAny(core, "-+"); i >= 0 {
		core = core[:i]
	}
	switch n := strings.Count(core, ".") + 1; {
	case n < 3:
		return "", fmt.Errorf("target: %s is not a full version: write e.g. %s", quoteShort(s), padVersion(v))
	case n > 3:
		return "", fmt.Errorf("target: %s has %d numeric parts: write major.minor.patch, e.g. 1.16.1", quoteShort(s), n)
	}
	return v.String(), nil
}

// padVersion suggests a full version for a short one, keeping the operator's major and minor:
// "1.16" -> "1.16.1".
func padVersion(v *version.Version) string {
	seg := v.Segments64()
	return fmt.Sprintf("%d.%d.%d", seg[0], seg[1], max(seg[2], 1))
}

// parseTargetJSON decodes the JSON form field by field so every error can name the field and say what
// to write instead.
func parseTargetJSON(b []byte) (Target, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var fields map[string]json.RawMessage
	if err := dec.Decode(&fields); err != nil {
		return Target{}, fmt.Errorf(`target: invalid JSON (%v): write e.g. {"version":"1.16.1","client_concurrency":2}`, err)
	}
	if dec.More() {
		return Target{}, errors.New(`target: trailing data after the JSON object: write a single object, e.g. {"version":"1.16.1"}`)
	}
	var unknown []string
	for k := range fields {
		if !isTargetField(k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return Target{}, fmt.Errorf("target: unknown field %q%s: the known fields are %s",
			unknown[0], suggestField(unknown[0]), strings.Join(targetFields, ", "))
	}

	t := Target{ClientConcurrency: DefaultClientConcurrency}
	raw, ok := fields["version"]
	if !ok || isNull(raw) {
		return Target{}, errors.New(`target: the JSON object has no "version": write e.g. {"version":"1.16.1"}`)
	}
	vs, err := stringField("version", raw)
	if err != nil {
		return Target{}, err
	}
	if t.Version, err = NormalizeVersion(strings.TrimSpace(vs)); err != nil {
		return Target{}, err
	}
	if raw, ok := fields["client_concurrency"]; ok && !isNull(raw) {
		var n json.Number
		if err := json.Unmarshal(raw, &n); err != nil || raw[0] == '"' {
			return Target{}, fmt.Errorf("target: client_concurrency %s is not a number: write a whole number >= 1 without quotes, e.g. 2", rawShort(raw))
		}
		c, err := strconv.Atoi(n.String())
		if err != nil || c < 1 {
			return Target{}, fmt.Errorf("target: client_concurrency %s is not a whole number >= 1: write e.g. 2", rawShort(raw))
		}
		t.ClientConcurrency = c
	}
	if raw, ok := fields["allow_downgrade"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &t.AllowDowngrade); err != nil {
			return Target{}, fmt.Errorf("target: allow_downgrade %s is not a boolean: write true or false (no quotes)", rawShort(raw))
		}
	}
	if t.SetBy, err = optionalString(fields, "set_by"); err != nil {
		return Target{}, err
	}
	if t.Reason, err = optionalString(fields, "reason"); err != nil {
		return Target{}, err
	}
	if s, err := optionalString(fields, "set_at"); err != nil {
		return Target{}, err
	} else if s != "" {
		at, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return Target{}, fmt.Errorf("target: set_at %s is not an RFC 3339 time: write e.g. 2024-05-01T12:00:00Z", quoteShort(s))
		}
		t.SetAt = at
	}
	return t, nil
}

func isTargetField(k string) bool {
	for _, f := range targetFields {
		if k == f {
			return true
		}
	}
	return false
}

// suggestField names the known field an unknown one most likely meant (case or separator typos).
func suggestField(k string) string {
	norm := func(s string) string {
		return strings.NewReplacer("_", "", "-", "", " ", "").Replace(strings.ToLower(s))
	}
	for _, f := range targetFields {
		if norm(f) == norm(k) {
			return fmt.Sprintf(" (did you mean %q?)", f)
		}
	}
	return ""
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

func stringField(name string, raw json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("target: %s %s is not a string: write it in double quotes", name, rawShort(raw))
	}
	return s, nil
}

func optionalString(fields map[string]json.RawMessage, name string) (string, error) {
	raw, ok := fields[name]
	if !ok || isNull(raw) {
		return "", nil
	}
	return stringField(name, raw)
}

// quoteShort quotes s for an error message, cut to a readable length.
func quoteShort(s string) string {
	const limit = 40
	if utf8.RuneCountInString(s) > limit {
		r := []rune(s)
		return strconv.Quote(string(r[:limit])) + "..."
	}
	return strconv.Quote(s)
}

// rawShort shows a raw JSON value in an error message: whitespace collapsed, cut to a readable length.
func rawShort(raw json.RawMessage) string {
	const limit = 40
	s := strings.Join(strings.Fields(string(raw)), " ")
	if r := []rune(s); len(r) > limit {
		return string(r[:limit]) + "..."
	}
	return s
}

// JSON encodes the target in the form ParseTarget reads back into an equal Target.
func (t Target) JSON() ([]byte, error) {
	b, err := json.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("failed to encode target: %w", err)
	}
	return b, nil
}

// Validate checks a Target built in code (not parsed) the way ParseTarget would, and returns it
// normalized: version without "v", client concurrency defaulted to 1.
func (t Target) Validate() (Target, error) {
	v, err := NormalizeVersion(t.Version)
	if err != nil {
		return Target{}, err
	}
	t.Version = v
	switch {
	case t.ClientConcurrency == 0:
		t.ClientConcurrency = DefaultClientConcurrency
	case t.ClientConcurrency < 0:
		return Target{}, fmt.Errorf("target: client_concurrency %d is negative: write a whole number >= 1, e.g. 2", t.ClientConcurrency)
	}
	return t, nil
}

// Equal reports whether two targets ask for the same thing (times compared as instants).
func (t Target) Equal(o Target) bool {
	return t.Version == o.Version && t.ClientConcurrency == o.ClientConcurrency &&
		t.AllowDowngrade == o.AllowDowngrade && t.SetBy == o.SetBy && t.Reason == o.Reason && t.SetAt.Equal(o.SetAt)
}

// String is a one-line human summary, e.g. `1.16.1 (clients 2 at a time, set by alice: "CVE fix")`.
func (t Target) String() string {
	if t.Version == "" {
		return "none"
	}
	var parts []string
	if t.ClientConcurrency > 1 {
		parts = append(parts, fmt.Sprintf("clients %d at a time", t.ClientConcurrency))
	}
	if t.AllowDowngrade {
		parts = append(parts, "downgrade allowed")
	}
	if t.SetBy != "" {
		parts = append(parts, "set by "+t.SetBy)
	}
	if !t.SetAt.IsZero() {
		parts = append(parts, "at "+t.SetAt.UTC().Format(time.RFC3339))
	}
	if t.Reason != "" {
		parts = append(parts, strconv.Quote(t.Reason))
	}
	if len(parts) == 0 {
		return t.Version
	}
	return t.Version + " (" + strings.Join(parts, ", ") + ")"
}
