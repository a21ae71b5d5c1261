package sqlstore

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/patchfleet/ota/server/handsets"
)

var _ handsets.DeviceLister = (*DeviceStore)(nil)

// deviceListRow is a devices row with the handset's state for the
// listed patch, NULL when it has none.
type deviceListRow struct {
	// Device is exported (its type need not be): gorm skips unexported
	// fields, embedded ones too.
	Device         deviceRow `gorm:"embedded"`
	PatchState     *string
	PatchErrorCode *string
	PatchAt        *time.Time
}

// ListDevices implements handsets.DeviceLister in one query, ordered and
// paged by id (keyset: the page starts after q.After) in byte order, so
// that each filter walks an index of migration 15 in that order and
// stops after q.Limit+1 rows (the extra row says whether a next page
// exists):
//
//   - with a State, the rows come from device_patch_states by (patch_id,
//     state, device_id), each joined to its device by primary key;
//   - otherwise from devices, by (model, id), (region, id), (build, id)
//     or the id itself, whichever the planner finds cheapest for the
//     filters given; the patch state, when q names a patch, joins by its
//     primary key (device_id, patch_id).
//
// An id prefix is a range of ids, not a LIKE: LIKE's case rules differ
// between the two databases, and the range uses the same indexes.
func (s *DeviceStore) ListDevices(ctx context.Context, q handsets.DeviceQuery) (*handsets.DevicePage, error) {
	if err := q.Validate(); err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	sql, args := s.listDevicesSQL(q)
	var rows []deviceListRow
	if err := s.db.gorm.WithContext(ctx).Raw(sql, args...).Scan(&rows).Error; err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	page := &handsets.DevicePage{Devices: make([]handsets.DeviceRow, 0, min(len(rows), q.Limit))}
	if len(rows) > q.Limit {
		rows = rows[:q.Limit]
		page.Next = rows[len(rows)-1].Device.ID
	}
	for i := range rows {
		r := &rows[i]
		row := handsets.DeviceRow{Device: r.Device.device()}
		if r.PatchState != nil {
			row.Patch = &handsets.PatchState{PatchID: q.PatchID, State: *r.PatchState}
			if r.PatchErrorCode != nil {
				row.Patch.ErrorCode = *r.PatchErrorCode
			}
			if r.PatchAt != nil {
				row.Patch.At = r.PatchAt.UTC()
			}
		}
		page.Devices = append(page.Devices, row)
	}
	return page, nil
}

// listDevicesSQL is ListDevices' query for a valid q, and its arguments.
//
// Without a state filter the patch state joins the page, not the query:
// the page is a subquery, so the join reads q.Limit+1 states by primary
// key. Joined outside the LIMIT, SQLite builds a Bloom filter over all
// of device_patch_states first (96 ms at 1,000,000 handsets, against
// under 1 ms).
func (s *DeviceStore) listDevicesSQL(q handsets.DeviceQuery) (string, []any) {
	bytes := ""
	if s.db.dialect == dialectPostgres {
		bytes = ` COLLATE "C"`
	}
	// key is the column the page is ordered and cut by: the state's
	// device_id when the state filter drives the query, so that its
	// index gives the order.
	key := "d.id"
	cols := "d." + strings.ReplaceAll(deviceColumns, ", ", ", d.")
	const stateCols = ", s.state AS patch_state, s.error_code AS patch_error_code, s.at AS patch_at"
	from := "devices d"
	var where []string
	var args []any
	cond := func(c string, a ...any) {
		where = append(where, c)
		args = append(args, a...)
	}
	if q.State != "" {
		key = "s.device_id"
		from = "device_patch_states s JOIN devices d ON d.id = s.device_id"
		cond("s.patch_id = ? AND s.state = ?", q.PatchID, q.State)
	}
	if q.Model != "" {
		cond("d.model = ?", q.Model)
	}
	if q.Region != "" {
		cond("d.region = ?", q.Region)
	}
	if q.Build != "" {
		cond("d.build = ?", q.Build)
	}
	if q.IDPrefix != "" {
		cond(key+bytes+" >= ? AND "+key+bytes+" < ?", q.IDPrefix, handsets.IDPrefixEnd(q.IDPrefix))
	}
	if q.After != "" {
		cond(key+bytes+" > ?", q.After)
	}
	sel := cols
	if q.State != "" {
		sel += stateCols
	}
	sql := "SELECT " + sel + " FROM " + from
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	sql += " ORDER BY " + key + bytes + " LIMIT ?"
	args = append(args, q.Limit+1)
	if q.State == "" && q.PatchID != "" {
		sql = "SELECT " + cols + stateCols + " FROM (" + sql + ") d" +
			" LEFT JOIN device_patch_states s ON s.device_id = d.id AND s.patch_id = ? ORDER BY d.id" + bytes
		args = append(args, q.PatchID)
	}
	return sql, args
}
