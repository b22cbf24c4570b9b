package release

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
)

// checkBaseURL parses the mirror base URL and enforces the https rule. Pure.
func checkBaseURL(raw string, allowInsecure bool) (*url.URL, error) {
	if raw == "" {
		return nil, fmt.Errorf("%w: BaseURL is empty (use %s for HashiCorp's releases)", ErrInvalid, DefaultBaseURL)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: failed to parse base URL %q: %w", ErrInvalid, raw, err)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%w: base URL %q must be scheme://host[/path] with no credentials, query or fragment", ErrInvalid, raw)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !allowInsecure {
			return nil, fmt.Errorf("%w: refusing plain http base URL %q: use https, or allow plain http for a trusted local mirror "+
				"(agent: release.allow_insecure_http = true; CLI: -allow-insecure-http); signatures are still verified", ErrInsecureURL, raw)
		}
	default:
		return nil, fmt.Errorf("%w: base URL %q: scheme must be https (or http when allowed)", ErrInvalid, raw)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// fileURL builds <base>/<product>/<version>/<name>.
func fileURL(base *url.URL, product, version, name string) string {
	u := *base
	u.Path = base.Path + "/" + product + "/" + version + "/" + name
	return u.String()
}

// httpClient returns a copy of the configured client whose redirects never leave https unless allowed and
// are bounded in number.
func (s *Source) httpClient() *http.Client {
	c := http.Client{Transport: http.DefaultTransport}
	if s.HTTPClient != nil {
		c = *s.HTTPClient
	}
	prev := c.CheckRedirect
	allow := s.AllowInsecureHTTP
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= 5 {
			return fmt.Errorf("%w: too many redirects", ErrInvalid)
		}
		if req.URL.Scheme != "https" && !(allow && req.URL.Scheme == "http") {
			return fmt.Errorf("%w: refusing redirect to %s: plain http is allowed only with release.allow_insecure_http (CLI: -allow-insecure-http)", ErrInsecureURL, req.URL.Redacted())
		}
		if prev != nil {
			return prev(req, via)
		}
		return nil
	}
	return &c
}

// get opens url; a 404 becomes ErrNotFound. The caller closes the body.
func (s *Source) get(ctx context.Context, client *http.Client, rawURL string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, fmt.Errorf("failed to build request for %s: %w", rawURL, err)
	}
	req.Header.Set("User-Agent", "upgrader-release")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("failed to GET %s: %w", rawURL, err)
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return resp, nil
	case resp.StatusCode == http.StatusNotFound:
		resp.Body.Close()
		return nil, fmt.Errorf("%w: %s", ErrNotFound, rawURL)
	default:
		resp.Body.Close()
		return nil, fmt.Errorf("failed to GET %s: unexpected status %s", rawURL, resp.Status)
	}
}

// getSmall downloads a small file (index, checksums, signature) into memory, at most limit bytes.
func (s *Source) getSmall(ctx context.Context, client *http.Client, rawURL string, limit int64) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.requestTimeout())
	defer cancel()
	resp, err := s.get(ctx, client, rawURL)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.ContentLength > limit {
		return nil, fmt.Errorf("%w: %s is %d bytes, limit %d", ErrTooLarge, rawURL, resp.ContentLength, limit)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("failed to read %s: %w", rawURL, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrTooLarge, rawURL, limit)
	}
	return b, nil
}

// download streams rawURL into a new temp file in dir while hashing it, at most limit bytes. It returns the
// temp file path (the caller renames or removes it) and the hex SHA-256.
func (s *Source) download(ctx context.Context, client *http.Client, rawURL, dir string, limit int64) (string, string, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.downloadTimeout())
	defer cancel()
	resp, err := s.get(ctx, client, rawURL)
	if err != nil {
		return "", "", 0, err
	}
	defer resp.Body.Close()
	if resp.ContentLength > limit {
		return "", "", 0, fmt.Errorf("%w: %s is %d bytes, limit %d", ErrTooLarge, rawURL, resp.ContentLength, limit)
	}
	f, err := os.CreateTemp(dir, ".download-*.tmp")
	if err != nil {
		return "", "", 0, fmt.Errorf("failed to create a temp file in %s: %w", dir, err)
	}
	tmp := f.Name()
	fail := func(err error) (string, string, int64, error) {
		f.Close()
		os.Remove(tmp)
		return "", "", 0, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return fail(fmt.Errorf("failed to download %s: %w", rawURL, err))
	}
	if n > limit {
		return fail(fmt.Errorf("%w: %s is larger than %d bytes", ErrTooLarge, rawURL, limit))
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return fail(fmt.Errorf("failed to download %s: got %d of %d bytes", rawURL, n, resp.ContentLength))
	}
	if err := f.Sync(); err != nil {
		return fail(fmt.Errorf("failed to sync %s: %w", tmp, err))
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return "", "", 0, fmt.Errorf("failed to close %s: %w", tmp, err)
	}
	return tmp, hex.EncodeToString(h.Sum(nil)), n, nil
}

// hashFile returns the hex SHA-256 of a file.
func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("failed to open %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("failed to hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// isNotFound reports whether err is a 404 from the mirror.
func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
