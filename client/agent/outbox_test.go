package agent

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/server/api/wire"
)

func report(id, state string) wire.ReportBody {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	return wire.ReportBody{ReportID: id, PatchID: "CM-2026-001", State: state, At: &at}
}

// TestOutboxStoresOnceSendsInOrderDeletesAfterAck: a report is on disk
// before its first send, adding it again keeps one copy, reports go in
// the order they were made, and only an acknowledged one is removed.
func TestOutboxStoresOnceSendsInOrderDeletesAfterAck(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "outbox")
	o, err := OpenOutbox(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []wire.ReportBody{report("b-1", "downloading"), report("a-2", "verified"), report("b-1", "downloading")} {
		if err := o.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := o.Len(); n != 2 {
		t.Fatalf("%d reports stored, want 2 (the second add of b-1 is the same report)", n)
	}
	var sent []string
	_, err = o.Flush(context.Background(), func(ctx context.Context, b wire.ReportBody) (bool, error) {
		// Durable before the send: a new process finds it.
		reopened, err := OpenOutbox(dir)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := reopened.Pending()
		if len(p) == 0 || p[0].Report.ReportID != b.ReportID || !p[0].Report.At.Equal(*b.At) {
			t.Errorf("sending %s, but the outbox on disk holds %+v", b.ReportID, p)
		}
		sent = append(sent, b.ReportID)
		return false, nil
	}, nil)
	if err != nil || len(sent) != 2 || sent[0] != "b-1" || sent[1] != "a-2" {
		t.Fatalf("sent %v, %v; want b-1 then a-2", sent, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("outbox holds %d files after both were acknowledged", len(ents))
	}
}

// TestOutboxKeepsWhatFailed: a temporary failure (503, the network) or a
// 401 keeps the report and the ones after it for the next flush, which
// sends the very same report; a refusal for good (400) drops it and
// goes on.
func TestOutboxKeepsWhatFailed(t *testing.T) {
	o, err := OpenOutbox(filepath.Join(t.TempDir(), "outbox"))
	if err != nil {
		t.Fatal(err)
	}
	o.Add(report("r-1", "downloading"))
	o.Add(report("r-2", "verified"))
	for _, failure := range []error{
		&client.Error{Status: http.StatusServiceUnavailable, RetryAfter: -1},
		&client.Error{Status: http.StatusUnauthorized, RetryAfter: -1},
		errors.New("connection reset"),
	} {
		calls := 0
		sent, err := o.Flush(context.Background(), func(ctx context.Context, b wire.ReportBody) (bool, error) {
			calls++
			return false, failure
		}, func(Entry, error) { t.Errorf("%v: dropped a report", failure) })
		if err == nil || sent != 0 || calls != 1 {
			t.Errorf("%v: flush sent %d in %d calls, %v; want it to stop at the first", failure, sent, calls, err)
		}
		if n, _ := o.Len(); n != 2 {
			t.Errorf("%v: %d reports left, want both", failure, n)
		}
	}
	var dropped []string
	var sent []wire.ReportBody
	_, err = o.Flush(context.Background(), func(ctx context.Context, b wire.ReportBody) (bool, error) {
		if b.ReportID == "r-1" {
			return false, &client.Error{Status: http.StatusBadRequest, Code: "invalid", RetryAfter: -1}
		}
		sent = append(sent, b)
		return true, nil // a duplicate is an acknowledgment too
	}, func(e Entry, err error) { dropped = append(dropped, e.Report.ReportID) })
	if err != nil || len(dropped) != 1 || dropped[0] != "r-1" || len(sent) != 1 || sent[0].ReportID != "r-2" {
		t.Fatalf("dropped %v, sent %v, %v; want r-1 dropped and r-2 sent", dropped, sent, err)
	}
	if want := report("r-2", "verified"); sent[0].State != want.State || !sent[0].At.Equal(*want.At) {
		t.Errorf("resent %+v, want the stored report %+v", sent[0], want)
	}
	if n, _ := o.Len(); n != 0 {
		t.Errorf("%d reports left, want none", n)
	}
}

// TestOutboxIgnoresTornWrite: what a crash left of a write in progress is
// not a report.
func TestOutboxIgnoresTornWrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "outbox")
	os.MkdirAll(dir, 0o700)
	os.WriteFile(filepath.Join(dir, ".tmp-000000000001-x.json-123"), []byte(`{"report_id":`), 0o600)
	o, err := OpenOutbox(dir)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := o.Len(); n != 0 || err != nil {
		t.Fatalf("%d reports, %v; want none", n, err)
	}
}
