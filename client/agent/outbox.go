package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/server/api/wire"
)

// Outbox holds the reports a handset has not yet seen acknowledged, one
// file per report in one folder, so that a report survives a crash, a
// reboot or a dead battery between the moment it is made and the
// server's answer. A report is written (synced, renamed into place)
// before its first send and removed only after the server answered 2xx
// (stored, or a duplicate of a stored one). Its id and time are in the
// file, so every retry is the same report and the server counts it once.
type Outbox struct {
	dir string
}

// OpenOutbox opens (creating) the outbox in dir, removing what a crash
// left half-written.
func OpenOutbox(dir string) (*Outbox, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	return &Outbox{dir: dir}, nil
}

// Entry is one stored report.
type Entry struct {
	name   string
	Report wire.ReportBody
}

// Pending returns the stored reports, oldest first.
func (o *Outbox) Pending() ([]Entry, error) {
	ents, err := os.ReadDir(o.dir)
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	var out []Entry
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(o.dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("outbox: %w", err)
		}
		var b wire.ReportBody
		if err := json.Unmarshal(data, &b); err != nil {
			// Written whole or not at all, so this is not ours: keep it
			// out of the way rather than block every report behind it.
			os.Rename(filepath.Join(o.dir, e.Name()), filepath.Join(o.dir, "."+e.Name()+".bad"))
			continue
		}
		out = append(out, Entry{name: e.Name(), Report: b})
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.name, b.name) })
	return out, nil
}

// Len is the number of stored reports.
func (o *Outbox) Len() (int, error) {
	p, err := o.Pending()
	return len(p), err
}

// Add stores b durably. A report with b's id already stored is kept as
// it is: adding is idempotent, so a step repeated after a crash does not
// queue its report twice.
func (o *Outbox) Add(b wire.ReportBody) error {
	if b.ReportID == "" || strings.ContainsAny(b.ReportID, `/\`) {
		return errors.New("outbox: report without a usable id")
	}
	pending, err := o.Pending()
	if err != nil {
		return err
	}
	seq := 1
	for _, e := range pending {
		if e.Report.ReportID == b.ReportID {
			return nil
		}
		if n, err := strconv.Atoi(strings.SplitN(e.name, "-", 2)[0]); err == nil && n >= seq {
			seq = n + 1
		}
	}
	data, err := json.Marshal(b)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(o.dir, fmt.Sprintf("%012d-%s.json", seq, b.ReportID)), data, 0o600)
}

// Remove forgets an acknowledged report.
func (o *Outbox) Remove(e Entry) error {
	if err := os.Remove(filepath.Join(o.dir, e.name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("outbox: %w", err)
	}
	return syncDir(o.dir)
}

// SendFunc sends one report; a nil error means the server acknowledged
// it (stored or duplicate).
type SendFunc func(ctx context.Context, b wire.ReportBody) (duplicate bool, err error)

// Flush sends the stored reports in order, removing each once
// acknowledged. It stops at the first failure the server may get over
// (the network, 5xx, 429: retry later, see client.Temporary) and returns
// it. A report the server refuses for good (400, 409: it will never take
// it) is dropped with a call to dropped, so that it does not hold back
// every later report. sent counts the acknowledged reports.
func (o *Outbox) Flush(ctx context.Context, send SendFunc, dropped func(Entry, error)) (sent int, err error) {
	pending, err := o.Pending()
	if err != nil {
		return 0, err
	}
	for _, e := range pending {
		_, err := send(ctx, e.Report)
		if err != nil {
			if ce := client.AsError(err); ce == nil || ce.Temporary() || ce.Status == 401 {
				// 401: the token is gone; the caller enrolls again and
				// the report goes out with the new token.
				return sent, err
			}
			if dropped != nil {
				dropped(e, err)
			}
		} else {
			sent++
		}
		if err := o.Remove(e); err != nil {
			return sent, err
		}
	}
	return sent, nil
}
