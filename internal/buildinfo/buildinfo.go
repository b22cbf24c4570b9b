// Package buildinfo owns the upgrader's own version, set at link time.
package buildinfo

// Version is the upgrader's release version; `make build` sets it with -ldflags -X.
var Version = "0.1.0-dev"
