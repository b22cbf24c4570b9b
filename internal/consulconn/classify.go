package consulconn

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
)

// IsAgentLocal reports whether path is an agent-local endpoint (/v1/agent/...), possibly behind a reverse-proxy
// path prefix. Such requests are never failed over.
func IsAgentLocal(path string) bool {
	return strings.Contains(path, "/v1/agent/") || strings.HasSuffix(path, "/v1/agent")
}

// IsConnectionError reports whether err means the agent could not be reached or dropped the connection before
// answering: a dial failure, a refused or reset connection, EOF before a response, a network timeout, or no
// response headers within the attempt's bound. The caller's own context ending is not a connection error.
func IsConnectionError(err error) bool {
	var nr *noResponseError
	if errors.As(err, &nr) {
		return true
	}
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	// net/http reports a connection closed before the response without wrapping a typed error.
	msg := err.Error()
	return strings.Contains(msg, "server closed idle connection") ||
		strings.Contains(msg, "transport connection broken") ||
		strings.Contains(msg, "connection reset by peer")
}
