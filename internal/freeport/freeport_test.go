package freeport

import (
	"errors"
	"net"
	"strconv"
	"testing"
)

func TestAfterSkipsBusyPortsAndStaysBelowTheEphemeralRange(t *testing.T) {
	lo, hi := EphemeralRange()
	if lo <= 0 || hi < lo {
		t.Fatalf("EphemeralRange() = %d, %d", lo, hi)
	}
	p, err := After(0)
	if err != nil {
		t.Fatal(err)
	}
	if p >= lo || p < lowest {
		t.Fatalf("After(0) = %d, want a port in [%d, %d)", p, lowest, lo)
	}
	// Hold it: the next search must move past it, because it binds.
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		t.Fatalf("port %d was reported free but does not bind: %v", p, err)
	}
	defer ln.Close()
	q, err := After(p - 1)
	if err != nil {
		t.Fatal(err)
	}
	if q <= p || q >= lo {
		t.Fatalf("After(%d) with %d held = %d, want a port in (%d, %d)", p-1, p, q, p, lo)
	}
}

func TestAfterTheLastCandidate(t *testing.T) {
	lo, _ := EphemeralRange()
	if _, err := After(lo - 1); !errors.Is(err, ErrNone) {
		t.Fatalf("After(%d) = %v, want ErrNone", lo-1, err)
	}
}
