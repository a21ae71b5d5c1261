package sqlstore

import (
	"context"
	"errors"
	"fmt"

	"gorm.io/gorm"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
)

// DeviceByID returns the device id, or ErrNotFound: the dashboard's
// device lookup. It is not part of handsets.DeviceStore, which the
// handset API uses and which finds devices by their token only.
func (s *DeviceStore) DeviceByID(ctx context.Context, id string) (*handsets.Device, error) {
	var row deviceRow
	err := s.db.gorm.WithContext(ctx).Select(deviceColumns).Where("id = ?", id).Take(&row).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return nil, fmt.Errorf("device %s: %w", id, errs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("look up device %s: %w", id, err)
	}
	return row.device(), nil
}
