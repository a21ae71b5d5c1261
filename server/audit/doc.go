// Package audit holds the hash-chained audit log: its entries, the
// store interface, the chain's verification (audit.go) and the
// checkpoints that anchor its head in the blob store
// (audit_checkpoint.go). It is apart from server because the people
// (server/identity), the rollouts (server) and the TUF workflow all
// append to it; it imports none of them.
package audit
