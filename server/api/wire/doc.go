// Package wire holds the JSON bodies and answers of the HTTP API, the
// types both the server (server/api) and its clients (client) use. It
// imports no HTTP framework and no database, so that a handset team can
// build the client on it for a phone.
package wire
