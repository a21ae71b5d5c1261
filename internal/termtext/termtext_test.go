package termtext

import "testing"

func TestEscape(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"plain", "ci token", "ci token"},
		{"unicode kept", "Zoë's 手机 \\ ok \ufffd", "Zoë's 手机 \\ ok \ufffd"},
		{"clear screen", "a\x1b[2Jb", `a\x1b[2Jb`},
		{"forged line", "ci\nFORGED token", `ci\nFORGED token`},
		{"carriage return and tab", "a\rb\tc", `a\rb\tc`},
		{"NUL and DEL", "a\x00b\x7f", `a\x00b\x7f`},
		{"C1 CSI and NEL", "a\u009b2Jb\u0085", `a\u009b2Jb\u0085`},
		{"bidi overrides", "abc\u202etxt.exe\u2066\u2069\u200f\u061c", `abc\u202etxt.exe\u2066\u2069\u200f\u061c`},
		{"line separators", "a\u2028b\u2029", `a\u2028b\u2029`},
		{"invalid bytes", "a\x9b2J\xffb", `a\x9b2J\xffb`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Escape(tc.in); got != tc.want {
				t.Errorf("Escape(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}
