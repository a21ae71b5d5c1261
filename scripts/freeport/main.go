// Command freeport prints a loopback TCP port below the kernel's ephemeral
// range that 127.0.0.1 binds right now, for scripts that must name a
// server's port before starting it (bash cannot bind a socket).
//
//	go run ./scripts/freeport            the first free port
//	go run ./scripts/freeport -after P   the first free port above P (retry after a failed start on P)
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/patchfleet/ota/internal/freeport"
)

func main() {
	after := flag.Int("after", 0, "search above this port (the one a server just failed to start on)")
	flag.Parse()
	p, err := freeport.After(*after)
	if err != nil {
		fmt.Fprintln(os.Stderr, "freeport:", err)
		os.Exit(1)
	}
	fmt.Println(p)
}
