package api

import (
	"testing"

	jsonv2 "github.com/go-json-experiment/json"

	"github.com/patchfleet/ota/server/api/wire"
)

// The two handset bodies a fleet sends most, as handsets send them.
var (
	benchCheckIn = []byte(`{"build":"7.4.2","model":"PX-7","channel":"stable",` +
		`"installed_patches":["CM-2025-014","CM-2026-001"],"cloud_messaging":"opt-in",` +
		`"number_encryption":true,"utc_offset_minutes":60}`)
	benchReport = []byte(`{"report_id":"0b9f1c7e-3d2a-4f4b-9a51-6f0e2d8c1a77","patch_id":"CM-2026-001",` +
		`"rollout_id":"r-5f2c9a1b","target":"cloudmsg/CM-2026-001/update.zip","state":"failed",` +
		`"error_code":"E_DISK_FULL","message":"not enough space on /system","at":"2026-12-07T11:40:12.123456Z"}`)
)

// strictV2 is what go-json-experiment/json needs to refuse what
// decodeJSON refuses: it matches names case-sensitively and refuses
// duplicate names by default, but accepts unknown members unless told.
var strictV2 = jsonv2.RejectUnknownMembers(true)

// BenchmarkDecodeBody decodes the check-in and report bodies with
// decodeJSON's strict check then encoding/json ("strict"), and with
// go-json-experiment/json in one strict pass ("jsonv2"), to decide
// whether the hand-written check is worth keeping (README, strict JSON).
func BenchmarkDecodeBody(b *testing.B) {
	for _, body := range []struct {
		name string
		data []byte
		v    func() any
	}{
		{"checkin", benchCheckIn, func() any { return new(wire.CheckInBody) }},
		{"report", benchReport, func() any { return new(wire.ReportBody) }},
	} {
		b.Run(body.name+"/strict", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body.data)))
			for b.Loop() {
				if err := decodeJSONBytes(body.data, body.v()); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(body.name+"/jsonv2", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body.data)))
			for b.Loop() {
				if err := jsonv2.Unmarshal(body.data, body.v(), strictV2); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
