package server_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
	"github.com/patchfleet/ota/server/textrule"
)

// This file generates identifiers the server must never keep (IMEIs with
// their Luhn digit, IMSIs, phone numbers in E.164 form, IPv4 and IPv6
// addresses, email addresses) and wraps them in the disguises of issue
// 13: digits split by commas, underscores, runs of spaces, non-breaking
// and zero-width spaces, colons, dashes, single letters (in a word);
// fullwidth
// digits; spaces or a fullwidth "＠" around an email's "@"; IPv4 in
// hexadecimal or as one number. Scrub must remove every one from a
// report's message, and every field validator must refuse every one its
// pattern can carry. FuzzScrubDisguised and FuzzFieldsDisguised explore
// the generator's seeds; TestDisguisedIdentifiers runs a fixed range of
// them, so that CI checks the generator without -fuzz.

// identifier is one generated identifier: its kind, its plain form, and
// its digits (for the number kinds).
type identifier struct {
	kind   string
	plain  string
	digits string
}

// luhn is the Luhn check digit of digits.
func luhn(digits string) byte {
	sum := 0
	for i := len(digits) - 1; i >= 0; i-- {
		d := int(digits[i] - '0')
		if (len(digits)-1-i)%2 == 0 {
			if d *= 2; d > 9 {
				d -= 9
			}
		}
		sum += d
	}
	return byte('0' + (10-sum%10)%10)
}

func randDigits(r *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('0' + r.IntN(10))
	}
	return string(b)
}

// Kinds of identifier.
const (
	kindIMEI  = "IMEI"
	kindIMSI  = "IMSI"
	kindPhone = "phone"
	kindIPv4  = "IPv4"
	kindIPv6  = "IPv6"
	kindEmail = "email"
)

var numberKinds = []string{kindIMEI, kindIMSI, kindPhone}

// newIdentifier makes an identifier of kind.
func newIdentifier(r *rand.Rand, kind string) identifier {
	switch kind {
	case kindIMEI:
		// A type allocation code of a real maker's range, a serial, and
		// the Luhn digit.
		tac := []string{"35", "86", "01", "99", "53"}[r.IntN(5)] + randDigits(r, 6)
		body := tac + randDigits(r, 6)
		d := body + string(luhn(body))
		return identifier{kind, d, d}
	case kindIMSI:
		// A mobile country and network code, then the subscriber.
		plmn := []string{"26201", "31026", "46000", "20801", "23415", "40445"}[r.IntN(6)]
		d := plmn + randDigits(r, 15-len(plmn))
		return identifier{kind, d, d}
	case kindPhone:
		// A country code and a national number, 11 to 14 digits in all.
		cc := []string{"1", "44", "49", "86", "33", "91", "7", "55", "81", "234"}[r.IntN(10)]
		d := cc + randDigits(r, 11+r.IntN(4)-len(cc))
		return identifier{kind, "+" + d, d}
	case kindIPv4:
		// A public-looking address: first octet 1-223.
		o := [4]int{1 + r.IntN(223), r.IntN(256), r.IntN(256), r.IntN(256)}
		return identifier{kind, fmt.Sprintf("%d.%d.%d.%d", o[0], o[1], o[2], o[3]), ""}
	case kindIPv6:
		return identifier{kind, fmt.Sprintf("2001:db8:%x:%x::%x", r.IntN(0x10000), r.IntN(0x10000), 1+r.IntN(0xffff)), ""}
	default:
		local := make([]byte, 5+r.IntN(6))
		for i := range local {
			local[i] = byte('a' + r.IntN(26))
		}
		return identifier{kindEmail, string(local) + "@" + []string{"example.com", "mail.example.org", "example.co.uk"}[r.IntN(3)], ""}
	}
}

// messageSeparators are what the disguises put between groups of digits
// in free text. Zero-width and ignorable characters are there twice:
// alone, and beside a visible separator.
var messageSeparators = []string{",", ", ", "_", "   ", " ", "\u00a0", "\u202f", "\u200b", "\u2060", "\ufeff", "\u00ad",
	"\u3164", ":", "-", ".", "/", "--", " - ", "\u200b-", ",\u200b", "\uff0c", "\uff1a", "\u3000"}

// split cuts digits into groups of 1 to 6 and joins them with sep.
func split(r *rand.Rand, digits, sep string) string {
	var b strings.Builder
	for i := 0; i < len(digits); {
		n := min(1+r.IntN(6), len(digits)-i)
		if i > 0 {
			b.WriteString(sep)
		}
		b.WriteString(digits[i : i+n])
		i += n
	}
	return b.String()
}

// fullwidth writes the ASCII digits of s as fullwidth digits.
func fullwidth(s string) string {
	return strings.Map(func(c rune) rune {
		if '0' <= c && c <= '9' {
			return c - '0' + '０'
		}
		return c
	}, s)
}

// disguise is an identifier written to hide: the value, what was done
// (for messages), and the separator used, if any.
type disguise struct {
	value, how, sep string
}

// disguiseInMessage is id as a disguise in free text.
func disguiseInMessage(r *rand.Rand, id identifier) disguise {
	switch id.kind {
	case kindIMEI, kindIMSI, kindPhone:
		plus := ""
		if id.kind == kindPhone && r.IntN(2) == 0 {
			plus = []string{"+", "\uff0b", "+("}[r.IntN(3)]
		}
		switch r.IntN(5) {
		case 0:
			return disguise{plus + id.digits, "plain", ""}
		case 1:
			return disguise{plus + fullwidth(id.digits), "fullwidth digits", ""}
		case 2:
			l := string(rune("xXaQ"[r.IntN(4)]))
			return disguise{"IMEI" + split(r, id.digits, l), fmt.Sprintf("after a word, split by the letter %q", l), l}
		default:
			sep := messageSeparators[r.IntN(len(messageSeparators))]
			return disguise{plus + split(r, id.digits, sep), fmt.Sprintf("split by %q", sep), sep}
		}
	case kindIPv4:
		var o [4]int
		fmt.Sscanf(id.plain, "%d.%d.%d.%d", &o[0], &o[1], &o[2], &o[3])
		n := uint32(o[0])<<24 | uint32(o[1])<<16 | uint32(o[2])<<8 | uint32(o[3])
		switch r.IntN(6) {
		case 0:
			return disguise{id.plain, "plain", ""}
		case 1:
			return disguise{fmt.Sprintf("0x%08x", n), "hex", ""}
		case 2:
			return disguise{fmt.Sprintf("0x%x.0x%x.0x%x.0x%x", o[0], o[1], o[2], o[3]), "dotted hex", ""}
		case 3:
			return disguise{fmt.Sprintf("%d", n), "one number", ""}
		case 4:
			return disguise{fullwidth(strings.ReplaceAll(id.plain, ".", "\uff0e")), "fullwidth", ""}
		default:
			return disguise{strings.ReplaceAll(id.plain, ".", ".\u200b"), "zero-width spaces", ""}
		}
	case kindIPv6:
		switch r.IntN(3) {
		case 0:
			return disguise{id.plain, "plain", ""}
		case 1:
			return disguise{strings.ReplaceAll(id.plain, ":", "\uff1a"), "fullwidth colons", ""}
		default:
			return disguise{strings.ToUpper(strings.ReplaceAll(id.plain, ":", ":\u200b")), "zero-width spaces", ""}
		}
	default:
		at := []string{"@", " @", "@ ", " @ ", "\uff20", "\u200b@", "\u00a0@\u00a0", " \uff20 "}[r.IntN(8)]
		return disguise{strings.Replace(id.plain, "@", at, 1), fmt.Sprintf("%q for @", at), at}
	}
}

// scrubProblem is what is wrong with Scrub's handling of the disguised
// identifier d of id in a sentence, or "": the sentence must come back
// with Redacted in its place and no letter or digit of it left (a "+"
// or a bracket may stay).
func scrubProblem(id identifier, d disguise) string {
	msg := "modem " + d.value + " lost"
	got := textrule.Scrub(msg)
	middle, ok := strings.CutPrefix(got, "modem ")
	if ok {
		middle, ok = strings.CutSuffix(middle, " lost")
	}
	if !ok || !strings.Contains(middle, textrule.Redacted) ||
		strings.ContainsFunc(strings.ReplaceAll(middle, textrule.Redacted, ""), func(c rune) bool { return unicode.IsLetter(c) || unicode.IsDigit(c) }) {
		return fmt.Sprintf("%s %s (%s): Scrub(%q) = %q, want it in place of the %s", id.kind, id.plain, d.how, msg, got, id.kind)
	}
	return ""
}

// fieldCheck is a validator of one field and the shape of a value it
// takes, to render an identifier in (to fit the pattern, so that the
// refusal comes from the identifier rules).
type fieldCheck struct {
	name  string
	check func(v string) error
	// render writes digits joined by sep in the field's alphabet.
	render func(digits, sep string) string
	// seps are the separators the pattern admits.
	seps []string
	// budget is the most digits the field takes (a disguised number of
	// more is refused whatever its separators).
	budget int
}

// fieldChecks are the validators of every stored text field that is not
// free text, handsets' and operators'.
func fieldChecks() []fieldCheck {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	same := func(d, _ string) string { return d }
	rollout := func(salt string) error {
		_, _, err := rollout.NewRollout(rollout.Rollout{ID: "ro-1", Stages: []float64{1}, Salt: salt, Policy: rollout.DefaultPolicy(),
			Release: rollout.RolloutRelease{Target: "px7/update.zip", PatchID: "CM-2026-001", InstallsBuild: "7.3.0"}}, "alice", now)
		return err
	}
	return []fieldCheck{
		{"model", func(v string) error { return handsets.ValidateModel("model", v) }, same, []string{".", "_", "-"}, 6},
		{"build", func(v string) error { return handsets.ValidateBuild("build", v) }, same, []string{".", "_", "-", "+"}, 12},
		{"channel", func(v string) error { return handsets.ValidateChannel("channel", v) },
			func(d, _ string) string { return "c-" + strings.ToLower(d) }, []string{"-"}, 6},
		{"error_code", handsets.ValidateErrorCode, func(d, _ string) string { return "E_" + strings.ToUpper(d) }, []string{"_"}, 6},
		{"patch_id", func(v string) error { return handsets.ValidatePatchID("patch_id", v) }, same, []string{".", "_", "-"}, 9},
		{"report_id", func(v string) error {
			return report(func(r *handsets.Report) { r.ID = v }).Validate(now)
		}, func(d, _ string) string { return "r-" + d }, []string{".", "_", "-"}, 9},
		{"id", func(v string) error {
			if !textrule.ValidRolloutID(v) {
				return &errs.FieldError{Field: "id", Message: "refused"}
			}
			return nil
		}, same, []string{".", "_", "-"}, 9},
		{"salt", rollout, same, []string{".", "_", "-"}, 9},
		{"name", func(v string) error { return identity.ValidateUser(v, identity.RoleOperator, "", true) },
			func(d, _ string) string { return strings.ToLower(d) }, []string{".", "_", "-"}, 6},
		{"token name", func(v string) error {
			if err := textrule.ValidateTokenName(v); err != nil {
				return &errs.FieldError{Field: "token name", Message: err.Error()}
			}
			return nil
		}, same, append([]string{".", "_", "-", "+"}, messageSeparators...), 6},
	}
}

// disguiseInField is id in one of the disguises field f's pattern can
// carry; a zero disguise when none fits (an email or
// an IPv6 address needs '@' or ':', which no field pattern admits but
// a token name's).
func disguiseInField(r *rand.Rand, f fieldCheck, id identifier) disguise {
	sep := f.seps[r.IntN(len(f.seps))]
	switch id.kind {
	case kindIMEI, kindIMSI, kindPhone:
		switch r.IntN(5) {
		case 0:
			return disguise{f.render(id.digits, ""), "plain", sep}
		case 1:
			return disguise{f.render(split(r, id.digits, sep), sep), fmt.Sprintf("split by %q", sep), sep}
		case 2:
			return disguise{f.render(split(r, id.digits, sep+sep), sep), fmt.Sprintf("split by %q twice", sep), sep}
		case 3:
			l := string(rune("xXaQ"[r.IntN(4)]))
			return disguise{f.render(split(r, id.digits, l), sep), fmt.Sprintf("split by the letter %q", l), l}
		default:
			return disguise{f.render("IMEI"+split(r, id.digits, "x"), sep), "after a word, split by letters", "x"}
		}
	case kindIPv4:
		var o [4]int
		fmt.Sscanf(id.plain, "%d.%d.%d.%d", &o[0], &o[1], &o[2], &o[3])
		n := uint32(o[0])<<24 | uint32(o[1])<<16 | uint32(o[2])<<8 | uint32(o[3])
		switch r.IntN(5) {
		case 0:
			return disguise{f.render(strings.ReplaceAll(id.plain, ".", sep), sep), fmt.Sprintf("joined by %q", sep), sep}
		case 1:
			return disguise{f.render(fmt.Sprintf("0x%08x", n), sep), "hex", sep}
		case 2:
			return disguise{f.render(fmt.Sprintf("0x%x%s0x%x%s0x%x%s0x%x", o[0], sep, o[1], sep, o[2], sep, o[3]), sep), "dotted hex", sep}
		case 3:
			return disguise{f.render(fmt.Sprintf("%d", n), sep), "one number", sep}
		default:
			return disguise{f.render(fmt.Sprintf("%dx%dx%dx%d", o[0], o[1], o[2], o[3]), sep), "joined by letters", "x"}
		}
	}
	if f.name == "token name" {
		return disguiseInMessage(r, id)
	}
	return disguise{"", "", sep}
}

// exempt reports whether field f accepts d of id by its documented
// rules. Only IPv4 addresses are: in a build, dotted numbers of an OEM
// build's shape (14.0.0.201: at most 7 digits, the middle two numbers
// at most 2 digits each), and numbers joined by '_', '-', '+' or letters
// (a version string; 10 digits joined are still refused); in a token
// name, numbers joined by a character that is no character
// (NormalizeText drops it: "1\u200b2\u200b3\u200b4" is 1234).
func exempt(f fieldCheck, id identifier, d disguise) bool {
	if id.kind != kindIPv4 {
		return false
	}
	var o [4]int
	fmt.Sscanf(id.plain, "%d.%d.%d.%d", &o[0], &o[1], &o[2], &o[3])
	switch f.name {
	case "build":
		switch {
		case d.how == "hex" || d.how == "dotted hex" || d.how == "one number":
			return false
		case d.sep == ".":
			return len(strings.ReplaceAll(id.plain, ".", "")) <= 7 && o[1] < 100 && o[2] < 100
		}
		return true
	case "token name":
		return d.sep != "" && textrule.NormalizeText(d.sep) == ""
	}
	return false
}

// refusalProblem is what is wrong with f's handling of d, or "": f must
// refuse it (unless exempt) with a field error that does not repeat it.
func refusalProblem(f fieldCheck, id identifier, d disguise) string {
	err := f.check(d.value)
	if err == nil {
		if exempt(f, id, d) {
			return ""
		}
		return fmt.Sprintf("%s accepted %s %s (%s) as %q", f.name, id.kind, id.plain, d.how, d.value)
	}
	fe := new(errs.FieldError)
	if !errors.As(err, &fe) {
		return fmt.Sprintf("%s %q: got %v, want a field error", f.name, d.value, err)
	}
	if len(d.value) >= 8 && strings.Contains(fe.Message, d.value) {
		return fmt.Sprintf("%s: the message %q repeats the value", f.name, fe.Message)
	}
	return ""
}

var allKinds = []string{kindIMEI, kindIMSI, kindPhone, kindIPv4, kindIPv6, kindEmail}

// seedProblems runs the generator once with seed: one identifier of
// each kind, disguised for a message and for each field of fields.
func seedProblems(seed uint64, fields []fieldCheck) []string {
	r := rand.New(rand.NewPCG(seed, 13))
	var problems []string
	add := func(p string) {
		if p != "" {
			problems = append(problems, p)
		}
	}
	for _, kind := range allKinds {
		id := newIdentifier(r, kind)
		add(scrubProblem(id, disguiseInMessage(r, id)))
		for _, f := range fields {
			if d := disguiseInField(r, f, id); d.value != "" {
				add(refusalProblem(f, id, d))
			}
		}
	}
	return problems
}

// TestDisguisedIdentifiers runs the generator over a fixed range of
// seeds: every disguise of every kind, against Scrub and each field.
func TestDisguisedIdentifiers(t *testing.T) {
	fields := fieldChecks()
	for seed := range uint64(1500) {
		if ps := seedProblems(seed, fields); len(ps) > 0 {
			t.Fatalf("seed %d:\n%s", seed, strings.Join(ps, "\n"))
		}
	}
}

// TestGeneratorIdentifiers checks the generator itself: IMEIs pass the
// Luhn check, numbers have the lengths of their kind, and a validator
// that accepts everything, or a scrubber that keeps everything, is
// caught.
func TestGeneratorIdentifiers(t *testing.T) {
	if got := luhn("49015420323751"); got != '8' {
		t.Fatalf("luhn(49015420323751) = %c, want 8", got)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 100 {
		for _, kind := range numberKinds {
			id := newIdentifier(r, kind)
			switch {
			case kind == kindIMEI && (len(id.digits) != 15 || luhn(id.digits[:14]) != id.digits[14]):
				t.Fatalf("IMEI %s: not 15 digits with a Luhn digit", id.digits)
			case kind == kindIMSI && len(id.digits) != 15:
				t.Fatalf("IMSI %s: not 15 digits", id.digits)
			case kind == kindPhone && (len(id.digits) < 11 || len(id.digits) > 14 || strings.ContainsFunc(id.digits, func(c rune) bool { return !unicode.IsDigit(c) })):
				t.Fatalf("phone %s: not 11-14 digits", id.digits)
			}
		}
	}
	lax := []fieldCheck{{name: "model", check: func(string) error { return nil }, render: func(d, _ string) string { return d },
		seps: []string{"-"}, budget: 64}}
	if ps := seedProblems(0, lax); len(ps) == 0 {
		t.Fatal("a validator that accepts everything went unnoticed")
	}
	id := newIdentifier(r, kindIMEI)
	if p := scrubProblem(id, disguise{value: split(r, id.digits, "\u200b"), how: "kept"}); p != "" {
		t.Fatalf("a zero-width split IMEI: %s", p)
	}
	// Words of letters and at most 9 digits each are what Scrub keeps
	// (a patch id's CM-2026-001): an IMEI so split stays.
	kept := "a" + id.digits[:5] + " b" + id.digits[5:10] + " c" + id.digits[10:]
	if p := scrubProblem(id, disguise{value: kept, how: "words"}); p == "" {
		t.Fatalf("an IMEI split into words (%s), which Scrub keeps in a message, went unnoticed", kept)
	}
}

// FuzzDisguisedIdentifiers explores the generator's seeds against Scrub
// and the field validators.
func FuzzDisguisedIdentifiers(f *testing.F) {
	for _, seed := range []uint64{0, 1, 13, 867530012345670} {
		f.Add(seed)
	}
	fields := fieldChecks()
	f.Fuzz(func(t *testing.T, seed uint64) {
		if ps := seedProblems(seed, fields); len(ps) > 0 {
			t.Fatal(strings.Join(ps, "\n"))
		}
	})
}

// probeValues are the values of issue 13's probe, which the server
// accepted and stored before: seeds of the fuzzers.
var probeValues = []string{
	"IMEI867530x012345x670", "E_867530X012345X670", "203.0.113.77",
	"867,530,012,345,670", "867530_012345_670", "867530   012345   670", "867530\u00a0012345\u00a0670",
	"867530\u200b012345\u200b670", "867530:012345:670", "alice @example.com", "alice\uff20example.com",
	"0x7f000001", "0x7f.0x0.0x0.0x1", "0xcb007147",
}

// FuzzFieldRules feeds any string to every field validator: none panics,
// each refuses with a field error, and what one accepts keeps its
// documented promise: a field of at most 6 digits holds nothing Scrub
// would remove; a patch or report id at most 9 digits and, when it has
// fewer than 7, nothing Scrub would remove either; a build at most 12.
func FuzzFieldRules(f *testing.F) {
	for _, v := range probeValues {
		f.Add(v)
	}
	for _, v := range []string{"PX-7", "TQ3A.230805.001", "V14.0.6.0.TNRMIXM", "14.0.0.201", "7.4.10-rc1", "CM-2026-001", "E_DISK_FULL"} {
		f.Add(v)
	}
	fields := fieldChecks()
	f.Fuzz(func(t *testing.T, v string) {
		for _, fc := range fields {
			err := fc.check(v)
			if err != nil {
				if fe := new(errs.FieldError); !errors.As(err, &fe) {
					t.Fatalf("%s %q: got %v, want a field error", fc.name, v, err)
				}
				continue
			}
			n := textrule.NormalizeText(v)
			digits := 0
			for _, c := range n {
				if unicode.IsDigit(c) {
					digits++
				}
			}
			switch {
			case fc.name == "id" && strings.HasPrefix(v, "ro-") && len(v) == 15:
				// An id NewRolloutID made.
			case digits > fc.budget:
				t.Fatalf("%s accepted %q with %d digits, more than %d", fc.name, v, digits, fc.budget)
			case fc.budget <= 9 && digits < 7 && textrule.HoldsIdentifier(v):
				t.Fatalf("%s accepted %q, which Scrub makes %q", fc.name, v, textrule.Scrub(v))
			}
		}
	})
}
