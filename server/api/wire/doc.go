// Package wire holds the JSON bodies and answers of the HTTP API, the
// types both the server (server/api) and its clients (client) use. It
// imports no HTTP framework and no database, so that a handset team can
// build the client on it for a phone.
package wire

// Where the API's routes live under the server's base URL.
const (
	// APIPrefix is the handset API: enrollment, check-in, reports.
	APIPrefix = "/api/v1"
	// AdminPrefix is the admin API that otactl and the dashboard's
	// actions use.
	AdminPrefix = APIPrefix + "/admin"
	// MetadataPrefix and TargetsPrefix are where TUF metadata and
	// target files are served.
	MetadataPrefix = "/tuf/"
	TargetsPrefix  = "/targets/"
)
