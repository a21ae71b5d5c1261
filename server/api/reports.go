package api

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/identity"
)

// mountReports adds the report routes to the admin group r: any admin
// token may read them.
func (s *Server) mountReports(r routes) {
	if s.reports == nil {
		return
	}
	r.add(http.MethodGet, "/rollouts/:id/report", needs(identity.PermRead), s.rolloutReport)
	r.add(http.MethodGet, "/reports/exposure", needs(identity.PermRead), s.exposureReport)
}

// reportFormat is the ?format= of a report: JSON unless "csv".
func reportFormat(c echo.Context) (csvOut bool, err error) {
	switch f := c.QueryParam("format"); f {
	case "", "json":
		return false, nil
	case "csv":
		return true, nil
	}
	return false, &errs.FieldError{Field: "format", Message: "want json or csv"}
}

// rolloutReport answers GET /api/v1/admin/rollouts/{id}/report: JSON,
// or with ?format=csv one row per model and a total row.
func (s *Server) rolloutReport(c echo.Context) error {
	asCSV, err := reportFormat(c)
	if err != nil {
		return err
	}
	rep, err := s.reports.RolloutReport(c.Request().Context(), c.Param("id"), s.reports.Clock())
	if err != nil {
		return err
	}
	if !asCSV {
		return c.JSON(http.StatusOK, rep)
	}
	return writeCSV(c, "rollout-"+rep.RolloutID+"-report.csv", rolloutCSV(rep))
}

// exposureReport answers GET
// /api/v1/admin/reports/exposure?days=30&day=YYYY-MM-DD&top=20: JSON, or
// with ?format=csv one row per day of the series.
func (s *Server) exposureReport(c echo.Context) error {
	asCSV, err := reportFormat(c)
	if err != nil {
		return err
	}
	opts := server.ExposureOptions{Day: c.QueryParam("day")}
	for _, p := range []struct {
		name string
		dst  *int
	}{{"days", &opts.Days}, {"top", &opts.Top}} {
		v := c.QueryParam(p.name)
		if v == "" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n == 0 {
			return &errs.FieldError{Field: p.name, Message: "want a whole number above 0"}
		}
		*p.dst = n
	}
	rep, err := s.reports.ExposureReport(c.Request().Context(), opts, s.reports.Clock())
	if err != nil {
		return err
	}
	if !asCSV {
		return c.JSON(http.StatusOK, rep)
	}
	return writeCSV(c, "exposure-"+rep.Day+".csv", exposureCSV(rep))
}

// rolloutCSVHeader is the header row of the rollout report's CSV.
var rolloutCSVHeader = []string{"rollout_id", "state", "percent", "model", "eligible", "target", "offered",
	"pending", "downloading", "installed", "failed", "rolled_back", "held", "hold_reason"}

// CSVTotal is the model column of the rollout CSV's last row, the
// totals; its held and hold_reason columns are the rollout's halt.
const CSVTotal = "(total)"

// rolloutCSV is the rollout report as CSV records: the header, one row
// per model of ByModel, and the total row.
func rolloutCSV(rep *server.RolloutReport) [][]string {
	row := func(model string, c server.CohortCounts, held bool, reason string) []string {
		return []string{rep.RolloutID, string(rep.State), strconv.FormatFloat(rep.Percent, 'f', -1, 64), model,
			itoa(c.Eligible), itoa(c.Target), itoa(c.Offered), itoa(c.Pending), itoa(c.Downloading),
			itoa(c.Installed), itoa(c.Failed), itoa(c.RolledBack), strconv.FormatBool(held), csvText(reason)}
	}
	out := [][]string{rolloutCSVHeader}
	for _, m := range rep.ByModel {
		out = append(out, row(m.Model, m.CohortCounts, m.Held, m.HoldReason))
	}
	var halt string
	if rep.Halt != nil {
		halt = rep.Halt.Reason
	}
	return append(out, row(CSVTotal, rep.CohortCounts, rep.Halt != nil, halt))
}

// exposureCSVHeader is the header row of the exposure report's CSV.
var exposureCSVHeader = []string{"day", "active", "exposed", "auto_enabled", "unencrypted", "share_compliant"}

// exposureCSV is the exposure report's daily series as CSV records,
// oldest day first; share_compliant is empty on a day without active
// handsets.
func exposureCSV(rep *server.ExposureReport) [][]string {
	out := [][]string{exposureCSVHeader}
	for _, d := range rep.Daily {
		var share string
		if d.ShareCompliant != nil {
			share = strconv.FormatFloat(*d.ShareCompliant, 'f', -1, 64)
		}
		out = append(out, []string{d.Day, itoa(d.Active), itoa(d.Exposed), itoa(d.AutoEnabled), itoa(d.Unencrypted), share})
	}
	return out
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// csvText keeps free text (an operator's hold reason) from being taken
// for a formula by a spreadsheet: a leading =, +, -, @, tab or carriage
// return gets a quote in front.
func csvText(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

// writeCSV answers records as a CSV attachment named filename, built
// whole first (a report is a few hundred rows at most) so that an error
// still gets its JSON answer.
func writeCSV(c echo.Context, filename string, records [][]string) error {
	var buf bytes.Buffer
	if err := csv.NewWriter(&buf).WriteAll(records); err != nil {
		return fmt.Errorf("write csv: %w", err)
	}
	c.Response().Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", filename))
	return c.Blob(http.StatusOK, "text/csv; charset=utf-8", buf.Bytes())
}
