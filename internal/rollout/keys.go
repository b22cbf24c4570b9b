package rollout

import (
	"errors"
	"fmt"
	"strings"
)

// DefaultPrefix is where the upgrader keeps its keys unless configured otherwise.
const DefaultPrefix = "upgrader/"

// DefaultProduct is the product the upgrader manages first.
const DefaultProduct = "consul"

// ErrBadKey means a prefix, product or node name cannot form a KV key.
var ErrBadKey = errors.New("rollout: invalid key part")

// Keys names every key of one product under one prefix. The zero value is not usable: build it with
// NewKeys (the Store does).
type Keys struct {
	base string // "<prefix><product>/"
}

// NewKeys validates prefix and product. An empty prefix is allowed (keys at the KV root); a prefix that
// does not end in "/" gets one.
func NewKeys(prefix, product string) (Keys, error) {
	prefix = normPrefix(prefix)
	if strings.HasPrefix(prefix, "/") {
		return Keys{}, fmt.Errorf("%w: prefix %q must not start with /", ErrBadKey, prefix)
	}
	if err := checkSegment("product", product); err != nil {
		return Keys{}, err
	}
	return Keys{base: prefix + product + "/"}, nil
}

func normPrefix(prefix string) string {
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return prefix
}

func checkSegment(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: %s is empty", ErrBadKey, what)
	case strings.ContainsAny(s, "/\x00"), s == "." || s == "..":
		return fmt.Errorf("%w: %s %q must be a single path segment", ErrBadKey, what, s)
	}
	return nil
}

// Target is the key of the desired target.
func (k Keys) Target() string { return k.base + "target" }

// Control is the key of the pause/halt control record.
func (k Keys) Control() string { return k.base + "control" }

// NodesPrefix is the prefix under which every node keeps its status record.
func (k Keys) NodesPrefix() string { return k.base + "nodes/" }

// Node is the status key of one node.
func (k Keys) Node(node string) string { return k.base + "nodes/" + node }

// Rollout is the key of the current rollout record.
func (k Keys) Rollout() string { return k.base + "rollout" }

// HistoryPrefix is the prefix of finished rollout records.
func (k Keys) HistoryPrefix() string { return k.base + "history/" }

// History is the key of one finished rollout record.
func (k Keys) History(id string) string { return k.base + "history/" + id }

// ServerLockPrefix is the semaphore prefix servers share (limit 1): "<prefix><product>/lock/servers/".
func ServerLockPrefix(prefix, product string) string {
	return normPrefix(prefix) + product + "/lock/servers/"
}

// ClientLockPrefix is the semaphore prefix clients share (limit N): "<prefix><product>/lock/clients/".
func ClientLockPrefix(prefix, product string) string {
	return normPrefix(prefix) + product + "/lock/clients/"
}
