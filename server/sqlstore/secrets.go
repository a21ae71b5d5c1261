package sqlstore

import (
	"context"
	"encoding/hex"
	"fmt"

	"github.com/patchfleet/ota/server/errs"
)

// ServerSecret returns the secret name of server_secrets (migration 11
// makes DeviceCookieSecret), or ErrNotFound. Every replica reads the
// same, so what one signs the others accept.
func (db *DB) ServerSecret(ctx context.Context, name string) ([]byte, error) {
	var rows []string
	if err := db.gorm.WithContext(ctx).Raw("SELECT secret FROM server_secrets WHERE name = ?", name).Scan(&rows).Error; err != nil {
		return nil, fmt.Errorf("read secret %s: %w", name, err)
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("secret %s: %w", name, errs.ErrNotFound)
	}
	b, err := hex.DecodeString(rows[0])
	if err != nil || len(b) < 16 {
		return nil, fmt.Errorf("secret %s: not 16 or more hex bytes", name)
	}
	return b, nil
}
