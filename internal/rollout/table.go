package rollout

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
)

// maxErrorWidth is how much of a node's last error the table shows; the full text is in the KV record.
const maxErrorWidth = 60

// FormatStatusTable writes what operators read first: one header line with the target, the control state
// and the progress, then one line per node (servers first, then clients, each sorted by name) with
// NODE ROLE VERSION STATE STEP SINCE LAST-ERROR. Times are shown relative to now, which the caller
// passes, so the output is deterministic.
func FormatStatusTable(w io.Writer, statuses []NodeStatus, control Control, target Target, now time.Time) error {
	sorted := append([]NodeStatus(nil), statuses...)
	sort.SliceStable(sorted, func(i, j int) bool {
		ri, rj := roleRank(sorted[i].Role), roleRank(sorted[j].Role)
		if ri != rj {
			return ri < rj
		}
		return sorted[i].Node < sorted[j].Node
	})

	if _, err := fmt.Fprintln(w, headerLine(sorted, control, target, now)); err != nil {
		return fmt.Errorf("failed to write status table: %w", err)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tVERSION\tSTATE\tSTEP\tSINCE\tLAST ERROR")
	for _, st := range sorted {
		since := "-"
		if !st.Since.IsZero() {
			since = ago(now, st.Since)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			cell(st.Node, 0), cell(st.Role, 0), cell(st.Version, 0), cell(string(st.State), 0),
			cell(st.Step, 0), since, cell(st.LastError, maxErrorWidth))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("failed to write status table: %w", err)
	}
	return nil
}

func headerLine(sorted []NodeStatus, control Control, target Target, now time.Time) string {
	var b strings.Builder
	b.WriteString("target ")
	if target.Version == "" {
		b.WriteString("none")
	} else {
		b.WriteString(cell(target.Version, 0))
		var parts []string
		if target.ClientConcurrency > 1 {
			parts = append(parts, fmt.Sprintf("clients %d at a time", target.ClientConcurrency))
		}
		if target.AllowDowngrade {
			parts = append(parts, "downgrade allowed")
		}
		set := "set"
		if target.SetBy != "" {
			set += " by " + cell(target.SetBy, 0)
		}
		if !target.SetAt.IsZero() {
			set += " " + ago(now, target.SetAt)
		}
		if target.Reason != "" {
			set += ": " + strconv.Quote(cell(target.Reason, maxErrorWidth))
		}
		if set != "set" {
			parts = append(parts, set)
		}
		if len(parts) > 0 {
			b.WriteString(" (" + strings.Join(parts, ", ") + ")")
		}
	}

	b.WriteString(" | control ")
	state := control.State
	if state == "" {
		state = Running
	}
	b.WriteString(string(state))
	who := control.By
	if state == Halted && control.HaltedBy != "" {
		who = control.HaltedBy
	}
	if who != "" {
		b.WriteString(" by " + cell(who, 0))
	}
	if !control.At.IsZero() {
		b.WriteString(" " + ago(now, control.At))
	}
	if control.Reason != "" {
		b.WriteString(": " + strconv.Quote(cell(control.Reason, maxErrorWidth)))
	}

	if target.Version != "" {
		at := 0
		for _, st := range sorted {
			if st.Version == target.Version {
				at++
			}
		}
		fmt.Fprintf(&b, " | %d/%d nodes at %s", at, len(sorted), cell(target.Version, 0))
	}
	return b.String()
}

func roleRank(role string) int {
	switch role {
	case RoleServer:
		return 0
	case RoleClient:
		return 1
	}
	return 2
}

// cell makes s safe for one table cell: control characters (tabs, newlines) become spaces, empty becomes
// "-", and a positive limit cuts it to that many runes ending in "...".
func cell(s string, limit int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.TrimSpace(s))
	if s == "" {
		return "-"
	}
	if r := []rune(s); limit > 0 && len(r) > limit {
		return string(r[:limit-3]) + "..."
	}
	return s
}

// ago renders the time from t to now compactly: "12s ago", "3m05s ago", "2h10m ago", "3d04h ago", and
// "in 5s" for a time ahead of now (clock skew between nodes).
func ago(now, t time.Time) string {
	d := now.Sub(t)
	if d < 0 {
		return "in " + compact(-d)
	}
	return compact(d) + " ago"
}

func compact(d time.Duration) string {
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
}
