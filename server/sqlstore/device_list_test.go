package sqlstore

import (
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
)

// TestDeviceList runs the device list's tests against SQLite and, when
// OTA_TEST_POSTGRES_DSN is set, PostgreSQL.
func TestDeviceList(t *testing.T) {
	runStoreSuite(t, []storeCase{
		{"Filters", testDeviceListFilters},
		{"PagesOverTies", testDeviceListPagesOverTies},
		{"Invalid", testDeviceListInvalid},
	})
}

// seedDeviceList enrolls a small fleet: two models in two regions, a
// few builds, ids whose byte order differs from a dictionary's ("dev_B"
// before "dev_a") and one ("devXa1") that a LIKE 'dev_a%' would match.
// dev_a1 and dev_a3 report for CM-1 (installed and failed), dev_B2
// downloading; dev_a2 reports for another patch only.
func seedDeviceList(t *testing.T, s *DeviceStore) {
	t.Helper()
	for _, d := range []struct{ id, model, build, region string }{
		{"dev_a1", "PX-8", "7.1.0", "DE"},
		{"dev_a2", "PX-8", "7.2.0", "FR"},
		{"dev_a3", "QZ-2", "7.1.0", "DE"},
		{"dev_a10", "PX-8", "7.1.0", "DE"},
		{"dev_B2", "QZ-2", "7.2.0", "FR"},
		{"devXa1", "PX-8", "7.1.0", ""},
	} {
		dev := newDevice(d.id, d.model)
		dev.Build, dev.Region = d.build, d.region
		mustEnroll(t, s, dev, "tok-"+d.id)
	}
	for _, r := range []handsets.Report{
		{ID: "r1", DeviceID: "dev_a1", PatchID: "CM-1", State: handsets.StateInstalled},
		{ID: "r2", DeviceID: "dev_a3", PatchID: "CM-1", State: handsets.StateFailed, ErrorCode: "E_NO_SPACE"},
		{ID: "r3", DeviceID: "dev_B2", PatchID: "CM-1", State: handsets.StateDownloading},
		{ID: "r4", DeviceID: "dev_a2", PatchID: "CM-2", State: handsets.StateInstalled},
	} {
		r.Target, r.At = "cm/"+r.PatchID+"/update.zip", t0.Add(time.Minute)
		mustAddReport(t, s, r)
	}
}

func listIDs(p *handsets.DevicePage) []string {
	var ids []string
	for _, r := range p.Devices {
		ids = append(ids, r.Device.ID)
	}
	return ids
}

func testDeviceListFilters(t *testing.T, b backend) {
	_, s := mustDevices(t, b)
	seedDeviceList(t, s)
	for _, tc := range []struct {
		name string
		q    handsets.DeviceQuery
		want []string
	}{
		{"all, in byte order", handsets.DeviceQuery{}, []string{"devXa1", "dev_B2", "dev_a1", "dev_a10", "dev_a2", "dev_a3"}},
		{"model", handsets.DeviceQuery{Model: "QZ-2"}, []string{"dev_B2", "dev_a3"}},
		{"model and region", handsets.DeviceQuery{Model: "PX-8", Region: "DE"}, []string{"dev_a1", "dev_a10"}},
		{"region", handsets.DeviceQuery{Region: "FR"}, []string{"dev_B2", "dev_a2"}},
		{"build", handsets.DeviceQuery{Build: "7.2.0"}, []string{"dev_B2", "dev_a2"}},
		{"model and build", handsets.DeviceQuery{Model: "PX-8", Build: "7.1.0"}, []string{"devXa1", "dev_a1", "dev_a10"}},
		{"exact id", handsets.DeviceQuery{IDPrefix: "dev_a3"}, []string{"dev_a3"}},
		{"id prefix, '_' no wildcard", handsets.DeviceQuery{IDPrefix: "dev_a"}, []string{"dev_a1", "dev_a10", "dev_a2", "dev_a3"}},
		{"id prefix of another", handsets.DeviceQuery{IDPrefix: "dev_a1"}, []string{"dev_a1", "dev_a10"}},
		{"id prefix is case sensitive", handsets.DeviceQuery{IDPrefix: "dev_b"}, nil},
		{"state", handsets.DeviceQuery{PatchID: "CM-1", State: handsets.StateFailed}, []string{"dev_a3"}},
		{"state and model", handsets.DeviceQuery{PatchID: "CM-1", State: handsets.StateInstalled, Model: "PX-8"}, []string{"dev_a1"}},
		{"state of another patch", handsets.DeviceQuery{PatchID: "CM-2", State: handsets.StateInstalled}, []string{"dev_a2"}},
		{"state and id prefix", handsets.DeviceQuery{PatchID: "CM-1", State: handsets.StateDownloading, IDPrefix: "dev_B"}, []string{"dev_B2"}},
		{"after a cursor", handsets.DeviceQuery{After: "dev_a10"}, []string{"dev_a2", "dev_a3"}},
		{"nothing matches", handsets.DeviceQuery{Model: "PX-8", Region: "FR", Build: "7.1.0"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := s.ListDevices(t.Context(), tc.q)
			if err != nil {
				t.Fatal(err)
			}
			if got := listIDs(p); !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
			if p.Next != "" {
				t.Errorf("next %q on a single page", p.Next)
			}
		})
	}

	// A patch without a state filter shows each row's state for it, and
	// none for handsets that reported nothing of it.
	p, err := s.ListDevices(t.Context(), handsets.DeviceQuery{PatchID: "CM-1", Region: "DE"})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range p.Devices {
		got[r.Device.ID] = "-"
		if r.Patch != nil {
			got[r.Device.ID] = r.Patch.State + "/" + r.Patch.ErrorCode
		}
	}
	want := map[string]string{"dev_a1": "installed/", "dev_a3": "failed/E_NO_SPACE", "dev_a10": "-"}
	if !maps.Equal(got, want) {
		t.Errorf("states of CM-1 in DE: got %v, want %v", got, want)
	}
	for _, r := range p.Devices {
		if r.Device.ID == "dev_a3" && (r.Device.Model != "QZ-2" || r.Device.Build != "7.1.0" || !r.Device.LastSeen.Equal(t0.Truncate(time.Microsecond)) ||
			!r.Device.EnrolledAt.Equal(t0.Truncate(time.Microsecond)) || !r.Patch.At.Equal(t0.Add(time.Minute).Truncate(time.Microsecond))) {
			t.Errorf("dev_a3: %+v, patch %+v", r.Device, r.Patch)
		}
	}
}

// testDeviceListPagesOverTies pages through handsets that share every
// filtered column (model, region, build, state): only the id tells them
// apart, and every one shows exactly once, in order.
func testDeviceListPagesOverTies(t *testing.T, b backend) {
	_, s := mustDevices(t, b)
	var all []string
	for i := range 8 {
		id := "dev_t" + string(rune('a'+i))
		all = append(all, id)
		mustEnroll(t, s, newDevice(id, "PX-8"), "tok-"+id)
		mustAddReport(t, s, handsets.Report{ID: "r-" + id, DeviceID: id, PatchID: "CM-1", Target: "cm/CM-1/update.zip",
			State: handsets.StateFailed, ErrorCode: "E_NO_SPACE", At: t0})
	}
	mustEnroll(t, s, newDevice("dev_other", "QZ-2"), "tok-other")
	for _, q := range []handsets.DeviceQuery{
		{Model: "PX-8", Region: "DE", Build: "7.1.0", Limit: 3},
		{PatchID: "CM-1", State: handsets.StateFailed, Limit: 3},
		{IDPrefix: "dev_t", Limit: 3},
		{Model: "PX-8", Limit: 4}, // a full last page: no link to an empty one
	} {
		var got []string
		pages := 0
		for {
			p, err := s.ListDevices(t.Context(), q)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			if len(p.Devices) > q.Limit {
				t.Fatalf("%+v: %d rows on a page of %d", q, len(p.Devices), q.Limit)
			}
			got = append(got, listIDs(p)...)
			if p.Next == "" {
				break
			}
			if p.Next != got[len(got)-1] {
				t.Fatalf("%+v: next %q, want the page's last id %q", q, p.Next, got[len(got)-1])
			}
			if pages > 10 {
				t.Fatalf("%+v: no end after 10 pages", q)
			}
			q.After = p.Next
		}
		wantPages := (len(all) + q.Limit - 1) / q.Limit
		if !slices.Equal(got, all) || pages != wantPages {
			t.Errorf("%+v: got %v in %d pages, want %v in %d", q, got, pages, all, wantPages)
		}
	}
}

func testDeviceListInvalid(t *testing.T, b backend) {
	_, s := mustDevices(t, b)
	for _, q := range []handsets.DeviceQuery{
		{IDPrefix: "dev%"},
		{Model: "+4915123456789"},
		{Region: "de"},
		{State: handsets.StateFailed},
		{PatchID: "CM-1", State: "done"},
		{After: "x' OR 1=1"},
		{Limit: handsets.MaxDevicePageSize + 1},
	} {
		if _, err := s.ListDevices(t.Context(), q); !errors.Is(err, errs.ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", q, err)
		}
	}
}
