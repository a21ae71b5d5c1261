// Package humanize writes sizes for people, one way for otactl and the
// dashboard.
package humanize

import "fmt"

// Bytes is n in binary units with one decimal: 512 B, 3.0 MiB, 1.2 GiB.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
