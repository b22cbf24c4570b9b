package mirror

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Server serves a mirror tree over plain HTTP on a loopback address.
type Server struct {
	url      string
	srv      *http.Server
	done     chan struct{} // closed when Serve's goroutine returns
	stop     chan struct{} // closed by Close
	once     sync.Once
	closeErr error
	requests atomic.Int64
}

// Serve starts serving root at addr (a loopback host:port; port 0 picks a free one) and returns once the
// listener is bound. The server stops when ctx is done or Close is called. .json files are served as
// application/json, like releases.hashicorp.com.
func Serve(ctx context.Context, addr, root string) (*Server, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("mirror: bad address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("mirror: refusing to serve on non-loopback address %q", addr)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("failed to listen on %s: %w", addr, err)
	}
	s := &Server{
		url:  "http://" + ln.Addr().String(),
		done: make(chan struct{}),
		stop: make(chan struct{}),
	}
	files := http.FileServer(http.Dir(root))
	s.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.requests.Add(1)
			if strings.HasSuffix(r.URL.Path, ".json") {
				w.Header().Set("Content-Type", "application/json")
			}
			files.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.closeErr = err
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
			s.Close()
		case <-s.stop:
		}
	}()
	return s, nil
}

// URL is the base URL of the served tree, e.g. http://127.0.0.1:41234.
func (s *Server) URL() string { return s.url }

// Requests counts the requests served so far.
func (s *Server) Requests() int64 { return s.requests.Load() }

// Close shuts the server down (waiting up to 5 s for in-flight requests) and waits for it to stop.
func (s *Server) Close() error {
	s.once.Do(func() {
		close(s.stop)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			s.srv.Close()
		}
		<-s.done
	})
	return s.closeErr
}
