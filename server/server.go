// Package server holds the OTA server's domain: the types, rules and storage
// interfaces that the HTTP layer (server/api) and the SQL adapter
// (server/sqlstore) share. It imports neither Echo nor gorm.
package server

import (
	"context"
	"errors"
	"fmt"
)

// Sentinel errors that domain code wraps with context
// (fmt.Errorf("%w: ...", server.ErrInvalid)). The HTTP layer maps each to
// one status code and one JSON error code; anything else is an internal
// error whose details go only to the log.
var (
	ErrInvalid      = errors.New("invalid request")
	ErrNotFound     = errors.New("not found")
	ErrConflict     = errors.New("conflict")
	ErrUnauthorized = errors.New("unauthorized")
	ErrForbidden    = errors.New("forbidden")
	ErrUnavailable  = errors.New("unavailable")
)

// ErrDeviceToken is the one answer to a device token that is malformed,
// unknown, replaced by a re-enrollment or erased: the client learns
// nothing from the difference. It is an ErrUnauthorized; device stores
// return it for a token they do not hold.
var ErrDeviceToken = fmt.Errorf("%w: invalid device token", ErrUnauthorized)

// Pinger is anything whose reachability decides whether the server is
// ready to take traffic: the database and the blob store.
type Pinger interface {
	Ping(ctx context.Context) error
}

func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
