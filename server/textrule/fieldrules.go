package textrule

import (
	"regexp"
	"strconv"
	"strings"
	"unicode"

	"github.com/patchfleet/ota/server/errs"
)

// The rules that keep identifiers out of the text fields that are
// stored as they come: a handset's model, build, channel, patch ids,
// report id and error code, and an operator's rollout id, salt, user
// name and token name. Each field first matches its pattern (ASCII
// letters, digits and a few of '.', '_', '-', '+'; never a space, '@'
// or ':'), then these rules, which count digits across separators and
// letters, so that "867530x012345x670", "867530__012345__670" and
// "E_867530X012345X670" are the IMEI they are. The README's table of
// handset fields states them.

// IDPattern is the pattern of ids that are stored as they come: patch
// ids, report ids, rollout ids and salts.
var IDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Digit budgets: the most digits a value may hold in total.
const (
	// MaxNameDigits is for fields with no reason to hold a long number:
	// models (SM-G998B), channels, error codes, user and token names.
	MaxNameDigits = 6
	// MaxIDDigits is for patch ids, report ids, rollout ids and salts,
	// which may carry a year and a counter (CM-2026-001).
	MaxIDDigits = 9
	// maxBuildDigits is for builds: Android builds carry a date and a
	// counter (AP2A.240805.005.F1 has 11).
	maxBuildDigits = 12
)

var (
	// sevenDigits is 7 digits in a row: the shortest local phone number.
	sevenDigits = regexp.MustCompile(`[0-9]{7}`)
	// hexNumber is a number written 0x…, at the start or after a
	// separator: an IPv4 address in hexadecimal (0x7f000001).
	hexNumber = regexp.MustCompile(`(?i)(?:^|[._+-])0x[0-9a-f]`)
	// numberQuad is four numbers of 1-3 digits, each from the next by a
	// run of '.', '_', '-' or '+' or by one letter: an IPv4 address
	// however written ("203.0.113.77", "10-0-0-1", "203x0x113x77").
	numberQuad = regexp.MustCompile(`(?:^|[^0-9])[0-9]{1,3}(?:(?:[._+-]+|[A-Za-z])[0-9]{1,3}){3}(?:[^0-9]|$)`)
	// macAddress is a MAC address: six pairs of hex digits joined by
	// '-', '_' or '.', or three dotted groups of four.
	macAddress = regexp.MustCompile(`(?i)(?:^|[^0-9a-z])(?:[0-9a-f]{2}(?:[-_.][0-9a-f]{2}){5}|[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4})(?:[^0-9a-z]|$)`)
	// dottedNumbers is a run of numbers joined by single dots.
	dottedNumbers = regexp.MustCompile(`[0-9]+(?:\.[0-9]+)+`)
)

// digitCount is how many ASCII digits s holds (the patterns admit no
// others).
func digitCount(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		if '0' <= s[i] && s[i] <= '9' {
			n++
		}
	}
	return n
}

// NameLike reports whether s, already matching a field's pattern, could
// still be or hold an identifier, for a field of at most maxDigits
// digits: more digits than that in total, 7 in a row, a 0x number, four
// numbers of 1-3 digits (an IPv4 address), or a MAC address.
func NameLike(s string, maxDigits int) bool {
	return digitCount(s) > maxDigits || sevenDigits.MatchString(s) || hexNumber.MatchString(s) ||
		numberQuad.MatchString(s) || macAddress.MatchString(s)
}

// NoIdentifier is the end of the message of a field that NameLike
// refuses. Messages say what is wanted and never repeat the value.
func NoIdentifier(maxDigits int) string {
	return "; at most " + strconv.Itoa(maxDigits) + " digits in all, no 7 in a row, no 0x number, no four numbers of 1-3 digits (an IPv4 address) and no MAC address"
}

// BuildLike reports whether a build, already matching its pattern,
// could still be or hold an identifier. A build is the same on every
// handset that runs it, and OEM builds carry dates and dotted versions
// (TQ3A.230805.001, V14.0.6.0.TNRMIXM, 14.0.0.201), so the rules are
// looser than NameLike's: more than 12 digits in total, 7 in a row, 10
// joined (joinedDigits), a 0x number, or an IPv4 address (ipv4InBuild).
func BuildLike(s string) bool {
	return digitCount(s) > maxBuildDigits || sevenDigits.MatchString(s) || joinedDigits(s) >= 10 ||
		hexNumber.MatchString(s) || macAddress.MatchString(s) || ipv4InBuild(s)
}

// BuildRule is the message of a build that BuildLike or the build
// pattern refuses.
const BuildRule = "want a version string of 1-64 letters, digits, '.', '_', '+' or '-', starting with a letter or digit; " +
	"at most 12 digits in all, no 7 in a row, no 10 joined by '.', '_', '+', '-' or a single letter, no 0x number, no MAC address, " +
	"and no four dotted numbers of at most 255 unless they have 7 digits or fewer and the middle two at most 2 each (as 14.0.0.201)"

// joinedDigits is the most digits of s in one chain: digits joined by
// runs of '.', '_', '+' and '-', or by a single letter between two
// digits ("867-530-012-345-670", "867530x012345x670"; in
// "TQ3A.230805.001" the "A." ends a chain, so its longest is 9).
func joinedDigits(s string) int {
	best, run := 0, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case '0' <= c && c <= '9':
			run++
			best = max(best, run)
		case c == '.' || c == '_' || c == '+' || c == '-':
			// A separator keeps the chain if a digit comes next after
			// the separators; a letter after them ends it below.
		case i > 0 && isDigitByte(s[i-1]) && i+1 < len(s) && isDigitByte(s[i+1]):
			// One letter between two digits.
		default:
			run = 0
		}
	}
	return best
}

func isDigitByte(c byte) bool { return '0' <= c && c <= '9' }

// ipv4InBuild reports whether a build holds four dotted numbers that
// read as an IPv4 address: each at most 255 and either more than 7
// digits together or a 3-digit second or third number (203.0.113.77,
// 192.168.1.10). The dotted versions of OEM builds (14.0.0.201,
// V14.0.6.0.TNRMIXM, V12.5.12.0) have small middle numbers and few
// digits; an address of that shape (10.0.0.1) passes.
func ipv4InBuild(s string) bool {
	for _, run := range dottedNumbers.FindAllString(s, -1) {
		parts := strings.Split(run, ".")
		for i := 0; i+4 <= len(parts); i++ {
			q := parts[i : i+4]
			digits, ok := 0, true
			for _, p := range q {
				n, err := strconv.Atoi(p)
				if err != nil || len(p) > 3 || n > 255 {
					ok = false
					break
				}
				digits += len(p)
			}
			if ok && (digits > 7 || len(q[1]) == 3 || len(q[2]) == 3) {
				return true
			}
		}
	}
	return false
}

// adminIDRule is the pattern part of the message for an id an operator
// chooses.
const adminIDRule = "want 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"

// ServerRolloutID is the shape of a rollout id rollout.NewRolloutID made.
var ServerRolloutID = regexp.MustCompile(`^ro-[0-9a-f]{12}$`)

// ValidRolloutID reports whether id may stand in a metric label or a log
// line: an id NewRolloutID made, or one that passes the rule of ids an
// operator chooses (ValidateChosenID). Ids are checked when a rollout is
// created; this keeps a rollout stored before the check (an IMEI as its
// id) out of /metrics.
func ValidRolloutID(id string) bool {
	return ServerRolloutID.MatchString(id) || IDPattern.MatchString(id) && !NameLike(id, MaxIDDigits)
}

// ValidateChosenID checks an id an operator chose (a rollout's id or
// salt): the id pattern and NameLike with the budget of patch ids, 9
// digits, since a rollout is often named after its patch
// (cm-2026-001-beta).
func ValidateChosenID(field, id string) error {
	if !IDPattern.MatchString(id) || NameLike(id, MaxIDDigits) {
		return errs.Fieldf(field, "%s%s", adminIDRule, NoIdentifier(MaxIDDigits))
	}
	return nil
}

// maxTokenNameLen is the longest token name, in bytes.
const maxTokenNameLen = 64

// ValidateTokenName checks a token's name: one printable line of 1-64
// bytes, with nothing Scrub would remove (an email address, an IP or MAC
// address, a phone number) and, read with every run of characters other
// than letters and digits as one '-' (squeeze), nothing NameLike
// refuses: at most 6 digits, no IPv4 address however separated. Names
// are shown and logged as they are, so one that holds an identifier is
// refused rather than scrubbed.
func ValidateTokenName(name string) error {
	n := NormalizeText(name)
	if strings.TrimSpace(name) == "" || len(name) > maxTokenNameLen || strings.ContainsFunc(name, isControl) ||
		digitCountAny(n) > MaxNameDigits || NameLike(squeeze(n), MaxNameDigits) || HoldsIdentifier(n) {
		return errs.Fieldf("name", "want a name of 1-%d printable characters on one line, with at most %d digits and no email, phone number or address in it",
			maxTokenNameLen, MaxNameDigits)
	}
	return nil
}

// digitCountAny is how many digits of any script s holds.
func digitCountAny(s string) int {
	n := 0
	for _, r := range s {
		if unicode.IsDigit(r) {
			n++
		}
	}
	return n
}

func isControl(r rune) bool { return unicode.IsControl(r) }

// squeeze is s with every run of characters that are neither letters
// nor digits made one '-', so that the field rules (NameLike) read
// "10, 0, 0, 1" and "10::0::0::1" as the "10-0-0-1" they are.
func squeeze(s string) string {
	var b strings.Builder
	sep := false
	for _, r := range s {
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			b.WriteRune(r)
			sep = false
		} else if !sep {
			b.WriteByte('-')
			sep = true
		}
	}
	return b.String()
}
