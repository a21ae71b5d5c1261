// Package errs holds the domain's sentinel errors (ErrInvalid,
// ErrNotFound, ErrConflict, ...), FieldError, RateLimitError and
// ErrNotAudited: the refusals that server/httperr turns into one status
// and code for the API and the pages alike. It is a leaf, apart from
// server, so that every domain package (identity, audit, the rollouts in
// server) can wrap the same sentinels without importing server.
package errs
