// Package server holds the OTA server's domain: the types, rules and storage
// interfaces that the HTTP layer (server/api) and the SQL adapter
// (server/sqlstore) share. It imports neither Echo nor gorm.
package server

import (
	"context"
)

// Pinger is anything whose reachability decides whether the server is
// ready to take traffic: the database and the blob store.
type Pinger interface {
	Ping(ctx context.Context) error
}
