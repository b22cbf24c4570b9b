package lock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

func TestOptionsFinalize(t *testing.T) {
	base := Options{Prefix: "upgrader/consul/lock/servers", Limit: 1, Holder: "s1"}
	cases := []struct {
		name    string
		mod     func(o *Options)
		check   func(t *testing.T, o Options)
		wantErr bool
	}{
		{name: "defaults", check: func(t *testing.T, o Options) {
			if o.Prefix != "upgrader/consul/lock/servers/" || o.TTL != DefaultTTL || o.LockDelay != DefaultLockDelay ||
				o.WaitTime != DefaultWaitTime || o.MonitorGrace != DefaultMonitorGrace || o.Address != DefaultAnchorAddress ||
				o.CleanupTimeout != DefaultCleanupTimeout || o.Logger == nil || o.Clock == nil || o.SessionName == "" {
				t.Fatalf("defaults not applied: %+v", o)
			}
		}},
		{name: "leading slash dropped", mod: func(o *Options) { o.Prefix = "/a/b/" }, check: func(t *testing.T, o Options) {
			if o.Prefix != "a/b/" {
				t.Fatalf("prefix %q", o.Prefix)
			}
		}},
		{name: "no prefix", mod: func(o *Options) { o.Prefix = " " }, wantErr: true},
		{name: "zero limit", mod: func(o *Options) { o.Limit = 0 }, wantErr: true},
		{name: "no holder", mod: func(o *Options) { o.Holder = "" }, wantErr: true},
		{name: "holder with slash", mod: func(o *Options) { o.Holder = "a/b" }, wantErr: true},
		{name: "ttl below consul's minimum", mod: func(o *Options) { o.TTL = 5 * time.Second }, wantErr: true},
		{name: "ttl above a day", mod: func(o *Options) { o.TTL = 25 * time.Hour }, wantErr: true},
		{name: "lock delay above 60s", mod: func(o *Options) { o.LockDelay = 2 * time.Minute }, wantErr: true},
		{name: "negative lock delay", mod: func(o *Options) { o.LockDelay = -time.Second }, wantErr: true},
		{name: "explicit values kept", mod: func(o *Options) {
			o.TTL, o.LockDelay, o.Address = 20*time.Second, time.Second, "10.0.0.7"
		}, check: func(t *testing.T, o Options) {
			if o.TTL != 20*time.Second || o.LockDelay != time.Second || o.Address != "10.0.0.7" {
				t.Fatalf("%+v", o)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			if tc.mod != nil {
				tc.mod(&o)
			}
			got, err := o.finalize()
			if tc.wantErr {
				if !errors.Is(err, ErrConfig) {
					t.Fatalf("want ErrConfig, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, got)
		})
	}
}

func TestDerived(t *testing.T) {
	if got := anchorNode("c1"); got != "upgrader-anchor-c1" {
		t.Fatal(got)
	}
	if got := renewInterval(15 * time.Second); got != 5*time.Second {
		t.Fatal(got)
	}
	for in, want := range map[time.Duration]string{15 * time.Second: "15s", time.Minute: "60s", 10500 * time.Millisecond: "11s"} {
		if got := ttlString(in); got != want {
			t.Errorf("ttlString(%s) = %q, want %q", in, got, want)
		}
	}
}

func TestIsTransient(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"no leader", api.StatusError{Code: 500, Body: "No cluster leader"}, true},
		{"bad gateway", api.StatusError{Code: 502}, true},
		{"rate limited", api.StatusError{Code: 429}, true},
		{"forbidden", api.StatusError{Code: 403, Body: "Permission denied"}, false},
		{"not found", api.StatusError{Code: 404}, false},
		{"renew's plain 500", errors.New("Unexpected response code: 500"), true},
		{"renew's plain 403", errors.New("Unexpected response code: 403"), false},
		{"refused", &url.Error{Op: "Get", URL: "http://x", Err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}}, true},
		{"eof", fmt.Errorf("x: %w", io.EOF), true},
		{"canceled", &url.Error{Op: "Get", URL: "http://x", Err: context.Canceled}, false},
		{"deadline", context.DeadlineExceeded, false},
		{"other", errors.New("boom"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := isTransient(tc.err); got != tc.want {
				t.Fatalf("isTransient(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	b := newBackoff()
	prevBase := time.Duration(0)
	for i := 0; i < 10; i++ {
		d := b.next()
		if d < b.cur*8/10 || d > b.cur*12/10 || b.cur < prevBase || b.cur > b.max {
			t.Fatalf("step %d: delay %v base %v", i, d, b.cur)
		}
		prevBase = b.cur
	}
	if b.cur != b.max {
		t.Fatalf("did not reach the cap: %v", b.cur)
	}
	b.reset()
	if d := b.next(); d > 120*time.Millisecond {
		t.Fatalf("reset ignored: %v", d)
	}
}
