// Package termtext makes stored text safe to print on a terminal. Names,
// reasons and paths that otad and otactl list were typed by other people
// (a viewer names a token, an operator writes a reason): printed raw, an
// escape sequence in one can clear the screen, recolour it or move the
// cursor, a newline can add a forged line under it, and a bidi control
// can show text in another order than it is stored.
package termtext

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Escape returns s with the characters a terminal acts on escaped as Go
// escapes them in a quoted string (\x1b, \n, \t, \u202e), and bytes that
// are not UTF-8 as \xNN: C0 controls, DEL and C1 controls (which include
// the one-byte CSI), the Unicode bidirectional controls, and the line and
// paragraph separators. Every other character, backslashes included, is
// kept, so ordinary text prints as it is. s without any of them is
// returned as it is.
func Escape(s string) string {
	i := strings.IndexFunc(s, escaped)
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	b.WriteString(s[:i])
	for i < len(s) {
		r, w := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && w == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case escaped(r) && r != utf8.RuneError:
			q := strconv.QuoteRuneToASCII(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+w])
		}
		i += w
	}
	return b.String()
}

// escaped reports whether Escape escapes r. strings.IndexFunc passes an
// invalid byte as utf8.RuneError, so that Escape looks closer; a real
// U+FFFD is kept.
func escaped(r rune) bool {
	switch {
	case r < 0x20, r >= 0x7f && r <= 0x9f: // C0, DEL, C1
		return true
	case r == 0x061c, r == 0x200e, r == 0x200f, // ALM, LRM, RLM
		r >= 0x202a && r <= 0x202e, // LRE, RLE, PDF, LRO, RLO
		r >= 0x2066 && r <= 0x2069, // LRI, RLI, FSI, PDI
		r == 0x2028, r == 0x2029:   // line and paragraph separators
		return true
	case r == utf8.RuneError:
		return true
	}
	return false
}
