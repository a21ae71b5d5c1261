package api

import (
	"context"
	"net/http"
	"sync"

	"github.com/labstack/echo/v4"
	"github.com/patchfleet/ota/server/api/wire"
)

// readyBody is the /readyz answer: one entry per dependency, "ok" or the
// reason it failed. When not ready it sits beside the usual error object.
type readyBody struct {
	Status string            `json:"status"`
	Checks map[string]string `json:"checks"`
	Error  *wire.ErrorDetail `json:"error,omitempty"`
}

// healthz answers while the process can serve HTTP at all; it checks no
// dependency, so an orchestrator restarts the process only when that helps.
func (s *Server) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

// readyz pings every dependency concurrently under one deadline and answers
// 503 naming the first failing one (in configuration order) when any fails.
func (s *Server) readyz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), s.timeout)
	defer cancel()

	errs := make([]error, len(s.checks))
	var wg sync.WaitGroup
	for i, chk := range s.checks {
		wg.Go(func() { errs[i] = chk.Pinger.Ping(ctx) })
	}
	wg.Wait()

	body := readyBody{Status: "ready", Checks: make(map[string]string, len(s.checks))}
	for i, chk := range s.checks {
		if errs[i] == nil {
			body.Checks[chk.Name] = "ok"
			continue
		}
		body.Checks[chk.Name] = errs[i].Error()
		if body.Error == nil {
			body.Status = "not_ready"
			body.Error = &wire.ErrorDetail{Code: "not_ready", Message: chk.Name + ": " + errs[i].Error()}
		}
	}
	if body.Error != nil {
		return c.JSON(http.StatusServiceUnavailable, body)
	}
	return c.JSON(http.StatusOK, body)
}
