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
}
