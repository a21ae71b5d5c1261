package server

import (
	"net/netip"
	"regexp"
	"strings"
)

// Redacted is what Scrub puts in place of each identifier it removes.
const Redacted = "[redacted]"

var (
	// An email address: anything word-like around an "@".
	emailPattern = regexp.MustCompile(`[\w.%+-]+@[\w-]+(?:\.[\w-]+)*`)
	// A candidate IPv6 address: hex digits, dots and at least two colons;
	// netip decides whether it is one ("10:00:00" is not).
	colonRun = regexp.MustCompile(`[0-9A-Fa-f.]*:[0-9A-Fa-f.:]*:[0-9A-Fa-f.:]*`)
	// A MAC address, with colons or dashes: a hardware id like an IMEI.
	macPattern = regexp.MustCompile(`\b[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}\b`)
	// Four dot-separated numbers of 1-3 digits: an IPv4 address.
	ipv4Pattern = regexp.MustCompile(`\b\d{1,3}(?:\.\d{1,3}){3}\b`)
	// A "+" followed by digits (a phone number in international form),
	// or 7 or more digits, either with up to two separators between any
	// two of them: "+86 138-1234-5678", "867 530 012 345 670",
	// "(030) 1234567". \p{Nd} counts any script's digits, so fullwidth
	// "８６７５３００１２３４５６７０" goes too.
	numberPattern = regexp.MustCompile(`\+\(?\p{Nd}(?:[\s.\-()/]{0,2}\p{Nd})*|\p{Nd}(?:[\s.\-()/]{0,2}\p{Nd}){6,}`)
)

// Scrub returns s with every email address, IPv4 and IPv6 address, MAC
// address, "+" followed by digits, and run of 7 or more digits (spaces,
// dots, dashes, slashes or parentheses between them included) replaced by
// Redacted: whatever a handset writes into the one free-text field it
// has, a report's message, no IMEI, IMSI, phone number or IP address
// reaches storage. Short numbers survive: "E_DISK_FULL at 42%", "retry 3
// of 5", "build 7.2.0". Scrub is idempotent.
func Scrub(s string) string {
	s = emailPattern.ReplaceAllLiteralString(s, Redacted)
	s = replaceIPv6(s)
	s = macPattern.ReplaceAllLiteralString(s, Redacted)
	s = ipv4Pattern.ReplaceAllLiteralString(s, Redacted)
	return numberPattern.ReplaceAllLiteralString(s, Redacted)
}

// replaceIPv6 redacts every colonRun that netip parses as an address and
// that stands alone: "std::string" keeps its "d::".
func replaceIPv6(s string) string {
	var b strings.Builder
	last := 0
	for _, m := range colonRun.FindAllStringIndex(s, -1) {
		start, end := m[0], m[1]
		if start > 0 && isWordByte(s[start-1]) || end < len(s) && isWordByte(s[end]) {
			continue
		}
		addr := s[start:end]
		if _, err := netip.ParseAddr(addr); err != nil {
			// A sentence or a port may follow: "at 2001:db8::1." or "::1:".
			addr = strings.TrimRight(addr, ".:")
			if _, err := netip.ParseAddr(addr); err != nil {
				continue
			}
		}
		b.WriteString(s[last:start])
		b.WriteString(Redacted)
		last = start + len(addr)
	}
	if last == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

func isWordByte(c byte) bool {
	return c == '_' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}
