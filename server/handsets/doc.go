// Package handsets holds what the server knows of a handset: the Device
// and its check-ins (CheckIn), its reports and their states (Report,
// PatchState), its record of each rollout that offered it something
// (DeviceRollout, device_rollout.go), the store interface (DeviceStore),
// the paged device list (device_list.go) and the rules of the fields a
// handset sends (validate.go). It is apart from server, which holds the
// Fleet service that acts on these, so that the rollouts
// (server/rollout) can decide on a handset without importing the fleet.
package handsets
