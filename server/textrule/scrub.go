package textrule

import (
	"net/netip"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// Redacted is what Scrub puts in place of each identifier it removes.
const Redacted = "[redacted]"

// NormalizeText is the form free text is matched (and stored) in: every
// default-ignorable code point dropped (format characters such as zero-
// width spaces, joiners, bidi marks and the BOM, Hangul fillers,
// variation selectors), then Unicode compatibility composition (NFKC),
// which makes fullwidth "８６７" and "＠" plain "867" and "@", and a
// non-breaking or ideographic space a space. So an identifier cannot
// hide from a pattern behind a character that shows as nothing or as
// its plain twin. NormalizeText is idempotent.
func NormalizeText(s string) string {
	if isPlainASCII(s) {
		return s // NFKC leaves printable ASCII as it is, and it has no ignorables
	}
	// Dropping a character can bring a base and a combining mark
	// together, and NFKC can make an ignorable (a halfwidth Hangul
	// filler becomes the filler): repeat until nothing changes.
	for range 4 {
		t := norm.NFKC.String(strings.Map(dropIgnorable, s))
		if t == s {
			break
		}
		s = t
	}
	return s
}

func isPlainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			return false
		}
	}
	return true
}

// dropIgnorable maps a default-ignorable code point to nothing.
func dropIgnorable(r rune) rune {
	if r == utf8.RuneError || unicode.Is(unicode.Cf, r) || unicode.Is(unicode.Other_Default_Ignorable_Code_Point, r) ||
		unicode.Is(unicode.Variation_Selector, r) {
		return -1
	}
	return r
}

var (
	// An email address: word characters around an "@", or, with spaces
	// around the "@" ("alice @ example.com"), a domain with a dot, so
	// that "meet @ 10:00" stays.
	emailPattern = regexp.MustCompile(`[\p{L}\p{N}_.%+-]+@[\p{L}\p{N}_-]+(?:\.[\p{L}\p{N}_-]+)*|[\p{L}\p{N}_.%+-]+[ \t]*@[ \t]*[\p{L}\p{N}_-]+(?:\.[\p{L}\p{N}_-]+)+`)
	// A candidate IPv6 address: hex digits, dots and at least two colons;
	// netip decides whether it is one ("10:00:00" is not).
	colonRun = regexp.MustCompile(`[0-9A-Fa-f.]*:[0-9A-Fa-f.:]*:[0-9A-Fa-f.:]*`)
	// A MAC address, with colons or dashes, or in dotted groups of four:
	// a hardware id like an IMEI.
	macPattern = regexp.MustCompile(`(?i)\b[0-9a-f]{2}(?:[:-][0-9a-f]{2}){5}\b|\b[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}\b`)
	// An IPv4 address in hexadecimal, as inet_aton reads it: 2 to 4
	// dotted parts of which one at least is 0x-hex ("0x7f.0x0.0x0.0x1",
	// "0x7f.1"), or one 0x number of 7 or 8 significant hex digits
	// ("0x7f000001": any 32-bit number from 1.0.0.0 up is an address).
	hexIPv4Pattern = regexp.MustCompile(`(?i)\b(?:(?:0x[0-9a-f]{1,8}|[0-9]{1,10})\.){1,3}(?:0x[0-9a-f]{1,8}|[0-9]{1,10})\b|\b0x0*[1-9a-f][0-9a-f]{6,7}\b`)
	// Four dot-separated numbers of 1-3 digits: an IPv4 address.
	ipv4Pattern = regexp.MustCompile(`\b[0-9]{1,3}(?:\.[0-9]{1,3}){3}\b`)
	// readableNumbers are the digit chains of 7 digits or more that
	// Scrub keeps whole: an ISO date ("2026-12-07"), with a time and a
	// UTC offset if any ("2026-12-07 10:00:00 +01:00"), and a time with
	// milliseconds ("10:00:00.250"). A chain must be one of these from
	// end to end: none has 15 digits, so no IMEI or IMSI passes as one.
	// rfc3339 is a time as RFC 3339 writes it: 2026-12-07T10:00:00.250Z.
	rfc3339 = regexp.MustCompile(`^(?:19|20)[0-9]{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?\.?$`)
	// yearNumber is the year and number of a patch id: 2026-001.
	yearNumber      = regexp.MustCompile(`^(?:19|20)[0-9]{2}[-.][0-9]{1,4}$`)
	readableNumbers = regexp.MustCompile(`^(?:(?:19|20)[0-9]{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])(?: (?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,3})?)?(?: ?[+-](?:[01][0-9]|2[0-3]):?[0-5][0-9])?)?|(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{1,3})$`)
)

// minNumberDigits is how many digits a chain needs for Scrub to remove
// it: local phone numbers have 7 or more.
const minNumberDigits = 7

// Scrub returns s, normalized (NormalizeText), with every identifier
// replaced by Redacted: email addresses (also with spaces around the "@"
// or a fullwidth "＠"), IPv6 addresses, MAC addresses, IPv4 addresses
// (dotted, and in hexadecimal: "0x7f000001", "0x7f.0x0.0x0.0x1"), and
// every chain of digits that holds 7 digits or more or follows a "+".
// A chain is digits joined by any runs of characters that are neither
// letters nor digits: "867530 012345 670", "867,530,012,345,670",
// "867530:012345:670", "+86 (138) 1234-5678" are each one chain, and a
// zero-width space between digits is no character at all. Letters end a
// chain, and a percentage after a space ("40%") joins none; but a word
// (letters, digits, '.', '_', '-', ':') with letters and more than 9
// digits goes whole: "IMEI867530x012345x670". Kept whole:
// chains that are an ISO date or time ("2026-12-07 10:00:00 +01:00") or
// the year and number of an id ("CM-2026-001"), and short numbers:
// "E_DISK_FULL at 42%", "retry 3 of 5", "build 7.4.10-rc1", "PX-7
// failed 40%". Scrub is idempotent.
//
// Whatever a handset writes into the one free-text field it has, a
// report's message, and whatever an operator writes into a reason, no
// IMEI, IMSI, phone number, email or IP address reaches storage in a
// form these patterns know.
func Scrub(s string) string {
	s = NormalizeText(s)
	s = emailPattern.ReplaceAllLiteralString(s, Redacted)
	s = replaceIPv6(s)
	s = replaceStandalone(s, macPattern, ".:-", isHexByte)
	s = hexIPv4Pattern.ReplaceAllStringFunc(s, func(m string) string {
		if strings.Contains(strings.ToLower(m), "0x") {
			return Redacted
		}
		return m // dotted decimal numbers: ipv4Pattern's and the chains' to judge
	})
	s = replaceStandalone(s, ipv4Pattern, ".", isDigitByte)
	s = scrubWords(s)
	return scrubNumbers(s)
}

// HoldsIdentifier reports whether Scrub would remove something from s,
// for text that is refused rather than scrubbed (a token's name).
func HoldsIdentifier(s string) bool {
	n := NormalizeText(s)
	return Scrub(n) != n
}

// scrubNumbers replaces every digit chain (see Scrub) of 7 digits or
// more, or right after a "+" (or "+("), that is not readable.
func scrubNumbers(s string) string {
	if !strings.ContainsFunc(s, unicode.IsDigit) {
		return s
	}
	rs := []rune(s)
	var b strings.Builder
	last := 0
	for i := 0; i < len(rs); {
		if !unicode.IsDigit(rs[i]) {
			i++
			continue
		}
		if n := percentAt(rs, i); n > 0 {
			i += n
			continue
		}
		start, end, digits := i, i, 0
		for j := i; ; {
			for j < len(rs) && unicode.IsDigit(rs[j]) {
				j++
				digits++
			}
			end = j
			k := j
			for k < len(rs) && !isAlnum(rs[k]) {
				k++
			}
			if k == len(rs) || !unicode.IsDigit(rs[k]) || percentAt(rs, k) > 0 {
				break
			}
			j = k
		}
		from := start
		plus := false
		switch {
		case start > 0 && rs[start-1] == '+':
			from, plus = start-1, true
		case start > 1 && rs[start-1] == '(' && rs[start-2] == '+':
			from, plus = start-2, true
		}
		if plus || digits >= minNumberDigits && !readableChain(rs, start, end) {
			b.WriteString(string(rs[last:from]))
			b.WriteString(Redacted)
			last = end
		}
		i = end
	}
	if last == 0 {
		return s
	}
	b.WriteString(string(rs[last:]))
	return b.String()
}

// maxWordDigits is the most digits a word with letters keeps: a patch
// id's year and number (CM-2026-001) fit, an IMEI or IMSI split by
// letters (IMEI867530x012345x670) does not.
const maxWordDigits = 9

// scrubWords replaces every word (a run of letters, digits, '.', '_',
// '-' and ':') that has letters and more than maxWordDigits digits,
// unless it is an RFC 3339 time: "IMEI867530x012345x670" and
// "E_867530X012345X670" go, "CM-2026-001" and
// "2026-12-07T10:00:00.250Z" stay.
func scrubWords(s string) string {
	rs := []rune(s)
	var b strings.Builder
	last := 0
	for i := 0; i < len(rs); {
		if !isWordRune(rs[i]) {
			i++
			continue
		}
		start, letters, digits := i, false, 0
		for ; i < len(rs) && isWordRune(rs[i]); i++ {
			switch {
			case unicode.IsLetter(rs[i]):
				letters = true
			case unicode.IsDigit(rs[i]):
				digits++
			}
		}
		if letters && digits > maxWordDigits && !rfc3339.MatchString(string(rs[start:i])) {
			b.WriteString(string(rs[last:start]))
			b.WriteString(Redacted)
			last = i
		}
	}
	if last == 0 {
		return s
	}
	b.WriteString(string(rs[last:]))
	return b.String()
}

func isWordRune(r rune) bool { return isAlnum(r) || r == '.' || r == '_' || r == '-' || r == ':' }

// percentAt is the length of the percentage that starts at rs[i], or 0:
// 1-3 digits, maybe a decimal part, then '%', at the start or after a
// space ("failed 40%", "12.5%"). A percentage joins no chain, so "PX-7
// failed 40%, PX-8 35%" and "CM-2026-001: 10% first" keep their numbers;
// it holds 5 digits at most.
func percentAt(rs []rune, i int) int {
	if i > 0 && !unicode.IsSpace(rs[i-1]) {
		return 0
	}
	j := i
	for j < len(rs) && unicode.IsDigit(rs[j]) && j-i < 4 {
		j++
	}
	if j == i || j-i > 3 {
		return 0
	}
	if j+1 < len(rs) && (rs[j] == '.' || rs[j] == ',') && unicode.IsDigit(rs[j+1]) {
		j++
		for k := 0; k < 2 && j < len(rs) && unicode.IsDigit(rs[j]); k++ {
			j++
		}
	}
	if j < len(rs) && rs[j] == '%' {
		return j + 1 - i
	}
	return 0
}

// readableChain reports whether the chain rs[start:end] is a date or
// time (readableNumbers), or the year and number of an id such as
// CM-2026-001 or SEC-2026.0042 (letters and '-' right before it).
func readableChain(rs []rune, start, end int) bool {
	chain := string(rs[start:end])
	if readableNumbers.MatchString(chain) {
		return true
	}
	return start > 1 && rs[start-1] == '-' && isASCIILetter(rs[start-2]) && yearNumber.MatchString(chain)
}

func isASCIILetter(r rune) bool { return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' }

func isAlnum(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) }

// replaceStandalone redacts every match of re that is not part of a
// longer run of the same shape: a match that one of joiners and a
// character of more (a digit for IPv4, a hex digit for MAC addresses)
// go on from, before or after, is left alone. "20801.04.083.6.10.34"
// is an IMSI's digits split by dots, not an IPv4 address in the middle
// of two numbers: the chains (scrubNumbers) judge it whole.
func replaceStandalone(s string, re *regexp.Regexp, joiners string, more func(byte) bool) string {
	var b strings.Builder
	last := 0
	joins := func(c byte) bool { return strings.IndexByte(joiners, c) >= 0 }
	for _, m := range re.FindAllStringIndex(s, -1) {
		start, end := m[0], m[1]
		if start > 1 && joins(s[start-1]) && more(s[start-2]) || end+1 < len(s) && joins(s[end]) && more(s[end+1]) {
			continue
		}
		b.WriteString(s[last:start])
		b.WriteString(Redacted)
		last = end
	}
	if last == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

func isHexByte(c byte) bool { return isDigitByte(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

// replaceIPv6 redacts every colonRun that netip parses as an address and
// that stands alone: "std::string" keeps its "d::". A Redacted beside
// it stands for what was there (Scrub is idempotent: "a::0000000" keeps
// "a::" once its digits are gone).
func replaceIPv6(s string) string {
	var b strings.Builder
	last := 0
	for _, m := range colonRun.FindAllStringIndex(s, -1) {
		start, end := m[0], m[1]
		if start > 0 && isWordByte(s[start-1]) || end < len(s) && isWordByte(s[end]) ||
			strings.HasSuffix(s[:start], Redacted) || strings.HasPrefix(s[end:], Redacted) {
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
