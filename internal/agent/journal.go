package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/upgrader-dev/upgrader/internal/atomicfile"
	"github.com/upgrader-dev/upgrader/internal/health"
)

// Step is how far an upgrade of this node got. The journal records it before the step's effect can be
// observed, so a restarted upgrader knows what may already have happened (FAULTS F10, F14).
type Step string

const (
	StepStaged      Step = "staged"       // the verified binary sits next to the live one; nothing touched
	StepLocked      Step = "locked"       // the lock is held; the live binary is still the old one
	StepSwapped     Step = "swapped"      // the live path may hold the new binary; the agent may be restarting
	StepConfirming  Step = "confirming"   // the agent was restarted on the new binary; gates running
	StepRollingBack Step = "rolling-back" // the old binary is being put back
)

// Journal is the node-local record of an upgrade in flight. It lives in the state directory, never in
// Consul: it must be readable while the local agent is down.
type Journal struct {
	Target       string          `json:"target"`
	From         string          `json:"from"`
	Server       bool            `json:"server"`
	Step         Step            `json:"step"`
	StagedPath   string          `json:"staged_path,omitempty"`
	RollbackPath string          `json:"rollback_path,omitempty"`
	SessionID    string          `json:"session_id,omitempty"`
	LockPrefix   string          `json:"lock_prefix,omitempty"`
	LockLimit    int             `json:"lock_limit,omitempty"`
	Baseline     health.Baseline `json:"baseline"`
	StartedAt    time.Time       `json:"started_at"`
	UpdatedAt    time.Time       `json:"updated_at"`
	Error        string          `json:"error,omitempty"`
}

// journalFile is the journal's name inside the state directory.
const journalFile = "journal.json"

// loadJournal reads the journal; (nil, nil) when there is none.
func loadJournal(dir string) (*Journal, error) {
	b, err := os.ReadFile(filepath.Join(dir, journalFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("failed to read the journal: %w", err)
	}
	var j Journal
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("failed to parse the journal %s (move it away to start over): %w", filepath.Join(dir, journalFile), err)
	}
	return &j, nil
}

// saveJournal writes the journal atomically: temp file, fsync, rename, fsync the directory.
func saveJournal(dir string, j *Journal, now time.Time) error {
	j.UpdatedAt = now
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return fmt.Errorf("failed to encode the journal: %w", err)
	}
	return atomicfile.WriteBytes(filepath.Join(dir, journalFile), b, 0o600)
}

// clearJournal removes the journal once an upgrade has ended either way.
func clearJournal(dir string) error {
	err := os.Remove(filepath.Join(dir, journalFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("failed to remove the journal: %w", err)
	}
	return atomicfile.SyncDir(dir)
}
