package sqlstore

import "slices"

// migrations is the schema, oldest first. Append only: a released
// migration is never edited, since databases out there already ran it.
var migrations = []Migration{
	{
		// One row with an id the database generates itself, so every
		// replica that shares the database reads the same id, and a
		// replica pointed at another database (a stale SQLite file, the
		// wrong PostgreSQL) shows a different one. The unique index on a
		// constant keeps it to one row.
		Version: 1,
		Name:    "installation",
		SQLite: []string{
			`CREATE TABLE installation (id TEXT PRIMARY KEY, created_at TIMESTAMP NOT NULL)`,
			`CREATE UNIQUE INDEX installation_single_row ON installation ((1))`,
			// 16 bytes from SQLite's CSPRNG: 32 hex digits.
			`INSERT INTO installation (id, created_at) VALUES (lower(hex(randomblob(16))), CURRENT_TIMESTAMP)`,
		},
		Postgres: []string{
			`CREATE TABLE installation (id TEXT PRIMARY KEY, created_at TIMESTAMP NOT NULL)`,
			`CREATE UNIQUE INDEX installation_single_row ON installation ((true))`,
			// gen_random_uuid (built in since PostgreSQL 13) draws from a
			// strong random source, unlike random(); md5 turns it into the
			// same 32 hex digits as on SQLite.
			`INSERT INTO installation (id, created_at) VALUES (md5(gen_random_uuid()::text || clock_timestamp()::text), now() AT TIME ZONE 'UTC')`,
		},
	},
	{
		// Drafts of offline-signed TUF metadata and their signatures.
		// pending_slot is 1 while a draft is pending and NULL otherwise;
		// its unique index allows one pending draft at a time, across
		// replicas, without a lock.
		Version: 2,
		Name:    "tuf_drafts",
		Common: []string{
			`CREATE TABLE tuf_drafts (
	id TEXT PRIMARY KEY,
	state TEXT NOT NULL,
	kind TEXT NOT NULL,
	created_by TEXT NOT NULL,
	created_at TIMESTAMP NOT NULL,
	updated_at TIMESTAMP NOT NULL,
	root_doc TEXT,
	targets_doc TEXT,
	pending_slot INTEGER UNIQUE
)`,
			`CREATE INDEX tuf_drafts_created ON tuf_drafts (created_at)`,
			`CREATE TABLE tuf_draft_signatures (
	draft_id TEXT NOT NULL REFERENCES tuf_drafts (id),
	part TEXT NOT NULL,
	keyid TEXT NOT NULL,
	sig TEXT NOT NULL,
	created_at TIMESTAMP NOT NULL,
	PRIMARY KEY (draft_id, part, keyid)
)`,
		},
	},
	{
		// Admin API tokens. Only the sha256 of a token is stored; the
		// token itself is shown once, when it is created.
		Version: 3,
		Name:    "api_tokens",
		Common: []string{
			`CREATE TABLE api_tokens (
	id TEXT PRIMARY KEY,
	name TEXT NOT NULL,
	role TEXT NOT NULL,
	token_hash TEXT NOT NULL UNIQUE,
	created_at TIMESTAMP NOT NULL,
	revoked_at TIMESTAMP
)`,
		},
	},
	{
		// Devices, their reports and their current state per patch.
		// devices has no index on last_seen: a check-in rewrites
		// last_seen, and with no indexed column changing PostgreSQL can
		// update the row in place (a HOT update) instead of touching
		// every index; the fleet summary reads the whole table anyway.
		Version:  4,
		Name:     "devices",
		SQLite:   devicesSchema,
		Postgres: append(slices.Clone(devicesSchema), `ALTER TABLE devices SET (fillfactor = 80)`),
	},
	{
		// The signed timestamp of the key enrollment that last set a
		// device's token: the next must be newer, so a captured
		// enrollment cannot be replayed. NULL for devices without a key,
		// and for keyed devices until they enroll again. A nullable
		// column without a default is a catalog change on PostgreSQL (no
		// table rewrite) and not indexed, so check-ins stay HOT updates.
		Version: 5,
		Name:    "devices_key_signed_at",
		Common:  []string{`ALTER TABLE devices ADD COLUMN key_signed_at TIMESTAMP`},
	},
}

// devicesSchema is migration 4 on both dialects.
var devicesSchema = []string{
	`CREATE TABLE devices (
	id TEXT PRIMARY KEY,
	token_hash TEXT NOT NULL UNIQUE,
	key_fingerprint TEXT UNIQUE,
	model TEXT NOT NULL,
	build TEXT NOT NULL,
	channel TEXT NOT NULL,
	region TEXT NOT NULL,
	installed_patches TEXT NOT NULL,
	cloud_messaging TEXT NOT NULL,
	number_encryption BOOLEAN NOT NULL,
	enrolled_at TIMESTAMP NOT NULL,
	last_seen TIMESTAMP NOT NULL
)`,
	`CREATE TABLE device_reports (
	device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	report_id TEXT NOT NULL,
	patch_id TEXT NOT NULL,
	target TEXT NOT NULL,
	state TEXT NOT NULL,
	error_code TEXT NOT NULL,
	message TEXT NOT NULL,
	at TIMESTAMP NOT NULL,
	received_at TIMESTAMP NOT NULL,
	PRIMARY KEY (device_id, report_id)
)`,
	`CREATE INDEX device_reports_received ON device_reports (received_at)`,
	`CREATE TABLE device_patch_states (
	device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	patch_id TEXT NOT NULL,
	state TEXT NOT NULL,
	error_code TEXT NOT NULL,
	at TIMESTAMP NOT NULL,
	PRIMARY KEY (device_id, patch_id)
)`,
	`CREATE INDEX device_patch_states_patch ON device_patch_states (patch_id, state)`,
}
