// Package textrule holds the rules of the text the server stores as it
// comes: what the identifier fields (models, builds, patch and rollout
// ids, user and token names) may hold so that no IMEI, IMSI, phone
// number or address hides in them (fieldrules.go), and the normalizing
// and scrubbing of free text (scrub.go). It is a leaf, apart from
// server, because the handset fields (server), the users and tokens
// (server/identity) and the audit reasons all apply the same rules.
package textrule
