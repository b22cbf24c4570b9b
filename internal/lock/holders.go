package lock

import (
	"context"
	"fmt"

	"github.com/hashicorp/consul/api"
)

// KVLister is the one KV call Holders needs.
type KVLister interface {
	List(prefix string, q *api.QueryOptions) (api.KVPairs, *api.QueryMeta, error)
}

// Holders returns the live holders of the semaphore at prefix (listed in its .lock record and still
// holding their contender entry), from one consistent read, without contending. Clients use it to wait
// while any server is mid-upgrade.
func Holders(ctx context.Context, kv KVLister, prefix string) ([]string, error) {
	pairs, _, err := kv.List(prefix, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("failed to read the semaphore at %s: %w", prefix, err)
	}
	st, err := readState(prefix, pairs, 0)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, h := range st.holderList() {
		if st.holds(h) {
			out = append(out, h)
		}
	}
	return out, nil
}
