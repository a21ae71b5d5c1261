package server_test

import (
	"testing"

	"github.com/patchfleet/ota/server"
)

func TestScrub(t *testing.T) {
	const r = server.Redacted
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
			got := server.Scrub(tc.in)
			if got != tc.want {
				t.Fatalf("Scrub(%q)\n got %q\nwant %q", tc.in, got, tc.want)
			}
			if again := server.Scrub(got); again != got {
				t.Errorf("Scrub is not idempotent: %q, then %q", got, again)
			}
		})
	}
}

func FuzzScrub(f *testing.F) {
	for _, s := range []string{"modem IMEI 867530012345670 SIM +8613812345678 ip 203.0.113.77",
		"2001:db8::1", "a.b@example.com", "E_DISK_FULL at 42%", "８６７５３００１２３４５６７０"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := server.Scrub(s)
		if again := server.Scrub(got); again != got {
			t.Fatalf("Scrub(%q) = %q, and again %q", s, got, again)
		}
		digits := 0
		for _, c := range got {
			switch {
			case c >= '0' && c <= '9':
				if digits++; digits >= 7 {
					t.Fatalf("Scrub(%q) = %q keeps 7 digits in a row", s, got)
				}
			default:
				digits = 0
			}
		}
	})
}
