package server_test

import (
	"testing"
	"unicode"

	"github.com/patchfleet/ota/server/textrule"
)

func TestScrub(t *testing.T) {
	const r = textrule.Redacted
	tests := []struct {
		name, in, want string
	}{
		// What must go.
		{"IMEI", "modem IMEI 867530012345670 lost", "modem IMEI " + r + " lost"},
		{"IMSI", "sim 262011234567890", "sim " + r},
		{"IMEI with spaces", "imei 867 530 012 345 670.", "imei " + r + "."},
		{"IMEI with dashes", "867-530-012-345-670", r},
		{"IMEI in fullwidth digits", "imei ８６７５３００１２３４５６７０", "imei " + r},
		{"IMEI glued to text", "id=867530012345670;", "id=" + r + ";"},
		{"phone, international", "SIM +8613812345678", "SIM " + r},
		{"phone with separators", "call +86 138-1234-5678 now", "call " + r + " now"},
		{"phone with parentheses", "tel +1 (415) 555-0100", "tel " + r},
		{"short international number", "dial +44", "dial " + r},
		{"national phone number", "tel (030) 1234567", "tel (" + r},
		{"seven digits", "code 1234567", "code " + r},
		{"IPv4", "ip 203.0.113.77", "ip " + r},
		{"IPv4 with port", "dial tcp 203.0.113.77:443: refused", "dial tcp " + r + ":443: refused"},
		{"IPv4 in a URL", "GET http://10.0.0.1/targets/x failed", "GET http://" + r + "/targets/x failed"},
		{"IPv6", "ip 2001:db8::1", "ip " + r},
		{"IPv6 ending a sentence", "at 2001:db8::1.", "at " + r + "."},
		{"IPv6 in brackets with port", "dial [2001:db8::1]:443", "dial [" + r + "]:443"},
		{"IPv6 loopback", "::1 refused", r + " refused"},
		{"IPv6 full", "fe80:0:0:0:0:0:0:1%wlan0", r + "%wlan0"},
		{"IPv4-mapped IPv6", "::ffff:203.0.113.77", r},
		{"email", "owner a.b@example.com said", "owner " + r + " said"},
		{"email with plus", "x+tag@mail.example.org", r},
		{"MAC address", "wlan 00:1a:2b:3c:4d:5e up", "wlan " + r + " up"},
		{"MAC address with dashes", "00-1A-2B-3C-4D-5E", r},
		{"everything at once", "modem IMEI 867530012345670 SIM +8613812345678 ip 203.0.113.77",
			"modem IMEI " + r + " SIM " + r + " ip " + r},

		// The probe's disguises (issue 13, finding 5).
		{"IMEI split by commas", "imei 867,530,012,345,670 lost", "imei " + r + " lost"},
		{"IMEI split by commas and spaces", "imei 867530, 012345, 670", "imei " + r},
		{"IMEI split by underscores", "imei 867530_012345_670", "imei " + r},
		{"IMEI split by three spaces", "imei 867530   012345   670", "imei " + r},
		{"IMEI split by non-breaking spaces", "imei 867530\u00a0012345\u00a0670", "imei " + r},
		{"IMEI split by narrow non-breaking spaces", "imei 867530\u202f012345\u202f670", "imei " + r},
		{"IMEI split by zero-width spaces", "imei 867530\u200b012345\u200b670", "imei " + r},
		{"IMEI split by word joiners", "imei 8\u20606\u20607\u20605\u20603\u20600\u20600\u20601", "imei " + r},
		{"IMEI split by soft hyphens", "imei 867530\u00ad012345\u00ad670", "imei " + r},
		{"IMEI split by a byte order mark", "imei 867530\ufeff012345670", "imei " + r},
		{"IMEI split by a Hangul filler", "imei 867530\u3164012345670", "imei " + r},
		{"IMEI split by colons", "imei 867530:012345:670", "imei " + r},
		{"IMEI split by slashes", "867/530/012/345/670", r},
		{"IMEI with combining marks", "8\u03326\u03327\u03325\u03323\u03320\u03320", r},
		{"IMEI in mathematical digits", "\U0001d7d6\U0001d7d4\U0001d7d5\U0001d7d3\U0001d7d1\U0001d7ce\U0001d7ce", r},
		{"IMEI in Arabic-Indic digits", "imei \u0668\u0666\u0667\u0665\u0663\u0660\u0660\u0661", "imei " + r},
		{"phone split by underscores", "call +86_138_1234_5678", "call " + r},
		{"IMEI split by letters", "modem IMEI867530x012345x670 lost", "modem " + r + " lost"},
		{"IMEI in an error code", "failed: E_867530X012345X670", "failed: " + r},
		{"phone in fullwidth plus", "\uff0b8613812345678", r},
		{"email with a space before @", "owner alice @example.com said", "owner " + r + " said"},
		{"email with spaces around @", "owner alice @ example.com", "owner " + r},
		{"email with a fullwidth @", "owner alice\uff20example.com", "owner " + r},
		{"email with a zero-width space", "alice\u200b@example.com", r},
		{"IPv4 in hex", "dial 0x7f000001 refused", "dial " + r + " refused"},
		{"IPv4 in dotted hex", "dial 0x7f.0x0.0x0.0x1 refused", "dial " + r + " refused"},
		{"IPv4 in short dotted hex", "dial 0xcb.113.77", "dial " + r},
		{"IPv4 as one number", "dial 3405803853", "dial " + r},
		{"IPv4 in fullwidth", "ip \uff12\uff10\uff13\uff0e\uff10\uff0e\uff11\uff11\uff13\uff0e\uff17\uff17", "ip " + r},
		{"IPv6 in fullwidth colons", "ip 2001\uff1adb8\uff1a\uff1a1", "ip " + r},
		{"MAC address in dotted groups", "mac 001a.2b3c.4d5e", "mac " + r},
		{"international number in parentheses", "tel +(86) 138 1234", "tel " + r},

		// Prose that must stay readable.
		{"ISO date", "failed on 2026-12-07", "failed on 2026-12-07"},
		{"ISO date and time", "at 2026-12-07 10:00:00 +01:00 install failed", "at 2026-12-07 10:00:00 +01:00 install failed"},
		{"RFC 3339 time", "at 2026-12-07T10:00:00.250Z", "at 2026-12-07T10:00:00.250Z"},
		{"time with milliseconds", "took until 10:00:00.250", "took until 10:00:00.250"},
		{"patch id", "privacy patch CM-2026-001: 10% first, widening after each healthy soak",
			"privacy patch CM-2026-001: 10% first, widening after each healthy soak"},
		{"percentages", "PX-7 failed 40%, PX-8 failed 35.5%, 20% of 1200", "PX-7 failed 40%, PX-8 failed 35.5%, 20% of 1200"},
		{"versions", "from 7.4.10 to 7.4.11-rc2", "from 7.4.10 to 7.4.11-rc2"},
		{"a mention", "ask @alice", "ask @alice"},
		{"an at with a time", "meet @ 10:00", "meet @ 10:00"},
		{"hex error code", "status 0x1f", "status 0x1f"},
		{"bidi marks go", "a\u200fb", "ab"},
		{"fullwidth letters become plain", "\uff25_DISK", "E_DISK"},

		// What must survive.
		{"error code with percentage", "E_DISK_FULL at 42%", "E_DISK_FULL at 42%"},
		{"counts", "retry 3 of 5", "retry 3 of 5"},
		{"version", "build 7.2.0", "build 7.2.0"},
		{"release candidate", "build 7.4.10-rc1", "build 7.4.10-rc1"},
		{"six digits", "sector 123456 unreadable", "sector 123456 unreadable"},
		{"clock time", "at 10:00:00 UTC", "at 10:00:00 UTC"},
		{"C++ scope", "std::string too long", "std::string too long"},
		{"sizes", "need 512 MB, have 96 MB", "need 512 MB, have 96 MB"},
		{"empty", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := textrule.Scrub(tc.in)
			if got != tc.want {
				t.Fatalf("Scrub(%q)\n got %q\nwant %q", tc.in, got, tc.want)
			}
			if again := textrule.Scrub(got); again != got {
				t.Errorf("Scrub is not idempotent: %q, then %q", got, again)
			}
		})
	}
}

func FuzzScrub(f *testing.F) {
	for _, s := range []string{"modem IMEI 867530012345670 SIM +8613812345678 ip 203.0.113.77",
		"2001:db8::1", "a.b@example.com", "E_DISK_FULL at 42%", "８６７５３００１２３４５６７０",
		"at 2026-12-07 10:00:00 +01:00", "privacy patch CM-2026-001: 10% first"} {
		f.Add(s)
	}
	for _, s := range probeValues {
		f.Add("modem " + s + " lost")
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := textrule.Scrub(s)
		if again := textrule.Scrub(got); again != got {
			t.Fatalf("Scrub(%q) = %q, and again %q", s, got, again)
		}
		if n := textrule.NormalizeText(got); n != got {
			t.Fatalf("Scrub(%q) = %q, not normalized (%q)", s, got, n)
		}
		digits := 0
		for _, c := range got {
			switch {
			case unicode.IsDigit(c):
				if digits++; digits >= 7 {
					t.Fatalf("Scrub(%q) = %q keeps 7 digits in a row", s, got)
				}
			default:
				digits = 0
			}
		}
	})
}
