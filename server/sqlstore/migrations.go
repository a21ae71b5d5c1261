package sqlstore

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
}
