// Package web will hold the rollout dashboard: templates and static assets
// embedded into the otad binary, and the view code that server/api mounts.
// Nothing is built here yet; the dashboard is its own issue.
package web
