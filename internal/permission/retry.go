package permission

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/upgrader-dev/upgrader/internal/consulconn"
)

// verdict is what a call's error means for the check.
type verdict int

const (
	allowed   verdict = iota // the call succeeded
	denied                   // 403: the token lacks the rule; final
	transient                // no leader, unreachable, token not known yet: retry until the deadline
	failed                   // anything else: a bug or a broken cluster; final
)

func (v verdict) String() string {
	return [...]string{"allowed", "denied", "transient", "failed"}[v]
}

// classify decides what err means. Pure.
//
// A 403 is final except "ACL not found": Consul does not know the token yet, which is how a cluster
// looks between its bootstrap and the moment the operator creates the upgrader's token (in exec mode the
// upgrader itself starts the agent that forms that cluster), or while a new token replicates. Every 5xx
// (500 No cluster leader, 500 No known Consul servers, 503 rate limited) and 429, connection failures and
// a single call's timeout are transient.
func classify(err error) verdict {
	if err == nil {
		return allowed
	}
	var se api.StatusError
	if errors.As(err, &se) {
		switch {
		case se.Code == http.StatusForbidden && strings.Contains(se.Body, "ACL not found"):
			return transient
		case se.Code == http.StatusForbidden:
			return denied
		case se.Code >= 500 || se.Code == http.StatusTooManyRequests:
			return transient
		}
		return failed
	}
	// Older api code paths and the raw client report the status only in the text.
	msg := err.Error()
	switch {
	case strings.Contains(msg, "ACL not found"):
		return transient
	case strings.Contains(msg, "403") && strings.Contains(strings.ToLower(msg), "permission denied"):
		return denied
	case strings.Contains(msg, "No cluster leader"), strings.Contains(msg, "No known Consul servers"),
		strings.Contains(msg, "Unexpected response code: 5"):
		return transient
	}
	if consulconn.IsConnectionError(err) || errors.Is(err, context.DeadlineExceeded) {
		return transient
	}
	return failed
}

// statusDetail is Consul's message from a StatusError, else the error text.
func statusDetail(err error) string {
	var se api.StatusError
	if errors.As(err, &se) && se.Body != "" {
		return se.Body
	}
	return err.Error()
}

// backoff doubles from min to max. Not safe for concurrent use.
type backoff struct{ cur, min, max time.Duration }

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(b.cur*2, b.max)
	}
	return b.cur
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// call runs one Consul call under the check's rules: a per-call deadline, retries with backoff while
// the answer is transient, and a DeniedError naming rule on a 403.
func (k *checker) call(ctx context.Context, rule, method, path string, fn func(ctx context.Context) error) error {
	bo := backoff{min: k.o.MinBackoff, max: k.o.MaxBackoff}
	var last error
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return k.unavailable(method, path, last, err)
		}
		cctx, cancel := context.WithTimeout(ctx, k.o.CallTimeout)
		err := fn(cctx)
		cancel()
		k.report.Calls++
		switch classify(err) {
		case allowed:
			k.log.Trace("allowed", "call", method+" "+path, "rule", rule)
			return nil
		case denied:
			return &DeniedError{Rule: rule, Method: method, Path: path, Status: http.StatusForbidden, Detail: statusDetail(err)}
		case failed:
			return fmt.Errorf("failed to %s %s: %w", method, path, err)
		}
		// Keep Consul's last real answer: a call cut short by the check's own deadline says nothing new.
		if last == nil || !errors.Is(err, context.DeadlineExceeded) || ctx.Err() == nil {
			last = err
		}
		if ctx.Err() != nil {
			return k.unavailable(method, path, last, ctx.Err())
		}
		k.report.Retries++
		wait := bo.next()
		if attempt == 1 || attempt%10 == 0 {
			k.log.Warn("consul cannot answer the permission check yet; retrying", "call", method+" "+path,
				"attempt", attempt, "retry_in", wait, "error", hint(err))
		}
		if err := sleep(ctx, wait); err != nil {
			return k.unavailable(method, path, last, err)
		}
	}
}

func (k *checker) unavailable(method, path string, last, cause error) error {
	if last == nil {
		return fmt.Errorf("%w: %s %s: %w", ErrUnavailable, method, path, cause)
	}
	if strings.Contains(last.Error(), "ACL not found") {
		return fmt.Errorf("%w: %w: %s %s: gave up (%w); last answer: %s", ErrUnavailable, ErrTokenUnknown, method, path, cause, hint(last))
	}
	return fmt.Errorf("%w: %s %s: gave up (%w); last answer: %s", ErrUnavailable, method, path, cause, hint(last))
}

// hint says in words what a transient error means.
func hint(err error) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "ACL not found"):
		return "Consul does not know the token (ACL not found): create it (README \"ACLs\") or fix consul.token_file; " + msg
	case strings.Contains(msg, "No cluster leader"):
		return "the cluster has no leader: " + msg
	}
	return msg
}
