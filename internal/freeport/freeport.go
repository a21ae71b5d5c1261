// Package freeport finds loopback TCP ports for servers that must be told
// their port before they start (PostgreSQL, MinIO in tests), proving each
// free with a real bind.
//
// Ports come from below the kernel's ephemeral range: the kernel hands
// ports in that range to outgoing connections and to anything listening on
// port 0 at any moment, so a port seen free there may be taken a
// millisecond later. Below it, only a process that names the port can take
// it. Callers still retry a start that fails with another port: proving a
// port free and the server binding it are two steps.
package freeport

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

// First is where the search starts when the ephemeral range allows it.
const First = 20000

// lowest is the first port an unprivileged process may bind.
const lowest = 1024

// EphemeralRange reads the kernel's ephemeral port range from
// /proc/sys/net/ipv4/ip_local_port_range, or returns Linux's default
// (32768–60999) where there is no such file.
func EphemeralRange() (lo, hi int) {
	lo, hi = 32768, 60999
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return lo, hi
	}
	l, err1 := strconv.Atoi(f[0])
	h, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || l <= 0 || h < l {
		return lo, hi
	}
	return l, h
}

// ErrNone means every candidate port was in use.
var ErrNone = errors.New("no free loopback port below the ephemeral range")

// After returns the first port above after (and at least First, or 1024
// when the ephemeral range starts lower) and below the ephemeral range
// that 127.0.0.1 binds; the listener is closed before it returns. Pass 0
// to start from the beginning and the port that failed to retry past it.
// The search is in order, not random: concurrent callers that pick the
// same port learn it when their server fails to start, and retry.
func After(after int) (int, error) {
	lo, _ := EphemeralRange()
	start := First
	if start >= lo {
		start = lowest
	}
	for p := max(after+1, start); p < lo; p++ {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		if err := ln.Close(); err != nil {
			return 0, fmt.Errorf("close probe on port %d: %w", p, err)
		}
		return p, nil
	}
	return 0, fmt.Errorf("%w (%d..%d)", ErrNone, max(after+1, start), lo-1)
}
