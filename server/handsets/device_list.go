package handsets

import (
	"context"
	"slices"
	"strings"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/textrule"
)

// Page sizes of the device list: a person reads a page, so a page is
// short, and a query cannot ask the database for more than a screenful.
const (
	DevicePageSize    = 50
	MaxDevicePageSize = 200
)

// DeviceQuery selects handsets for the dashboard's device list. An empty
// field does not filter; the filters are what the devices table and the
// patch states keep (model, build, region, install state), never
// anything that identifies a person or a SIM.
//
// Handsets come in id order, in byte order on both databases, and a page
// continues after the last id of the one before (After): keyset
// pagination, so a deep page costs what the first one does, and a
// handset enrolling meanwhile shifts no page.
type DeviceQuery struct {
	// IDPrefix keeps the handsets whose id starts with it; an exact id
	// is its own prefix.
	IDPrefix string
	Model    string
	Build    string
	Region   string
	// PatchID is the patch whose install state each row shows. State,
	// one of ReportStates, keeps the handsets whose current state for
	// PatchID is State, and needs PatchID.
	PatchID string
	State   string
	// After is the cursor: the page starts after this id (DevicePage.Next).
	After string
	// Limit is the page size: 0 is DevicePageSize, at most
	// MaxDevicePageSize.
	Limit int
}

// Validate checks q with the rules of the fields it filters on, so that
// a filter cannot carry what a handset could not send (a phone number as
// a model), and sets the default Limit.
func (q *DeviceQuery) Validate() error {
	if q.IDPrefix != "" && !textrule.IDPattern.MatchString(q.IDPrefix) {
		return errs.Fieldf("id", "want the start of a handset id: letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	if q.Model != "" {
		if err := ValidateModel("model", q.Model); err != nil {
			return err
		}
	}
	if q.Build != "" {
		if err := ValidateBuild("build", q.Build); err != nil {
			return err
		}
	}
	if q.Region != "" && !RegionPattern.MatchString(q.Region) {
		return errs.Fieldf("region", "want a two-letter ISO 3166-1 code such as DE")
	}
	if q.PatchID != "" {
		if err := ValidatePatchID("patch", q.PatchID); err != nil {
			return err
		}
	}
	if q.State != "" {
		if !slices.Contains(ReportStates, q.State) {
			return errs.Fieldf("state", "want one of %s", strings.Join(ReportStates, ", "))
		}
		if q.PatchID == "" {
			return errs.Fieldf("patch", "choose the patch whose install state to filter by")
		}
	}
	if q.After != "" && !textrule.IDPattern.MatchString(q.After) {
		return errs.Fieldf("after", "want a handset id (the cursor of a next-page link)")
	}
	switch {
	case q.Limit == 0:
		q.Limit = DevicePageSize
	case q.Limit < 0 || q.Limit > MaxDevicePageSize:
		return errs.Fieldf("limit", "want 1 to %d", MaxDevicePageSize)
	}
	return nil
}

// DeviceRow is one handset of the device list.
type DeviceRow struct {
	Device *Device
	// Patch is the handset's current state for the query's PatchID; nil
	// when it reported none (or the query named no patch).
	Patch *PatchState
}

// DevicePage is one page of the device list.
type DevicePage struct {
	Devices []DeviceRow
	// Next is the cursor of the next page (its DeviceQuery.After); ""
	// on the last page.
	Next string
}

// DeviceLister lists handsets for the dashboard. It is not part of
// DeviceStore, which the handset API uses.
type DeviceLister interface {
	// ListDevices returns the page of handsets q selects, in id order;
	// q must be valid (DeviceQuery.Validate).
	ListDevices(ctx context.Context, q DeviceQuery) (*DevicePage, error)
}

// IDPrefixEnd is the least string above every string that starts with
// prefix, in byte order: id >= prefix AND id < IDPrefixEnd(prefix) is the
// prefix match as a range an index on id serves (LIKE depends on the
// collation and, on SQLite, on case). prefix must be non-empty ASCII, as
// DeviceQuery.Validate makes IDPrefix.
func IDPrefixEnd(prefix string) string {
	b := []byte(prefix)
	b[len(b)-1]++
	return string(b)
}
