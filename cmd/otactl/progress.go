package main

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/patchfleet/ota/humanize"
)

// progress shows how far an upload is on stderr: on a terminal one line
// rewritten in place ("\r"), otherwise a line at every 10%, so that CI
// logs stay short.
//
// The HTTP transport reads the body on its own goroutine, possibly even
// after the response has arrived, so every field sits behind mu and
// finish stops all further output. It is client.Upload's Progress.
type progress struct {
	mu       sync.Mutex
	w        io.Writer
	name     string
	total    int64
	tty      bool
	now      func() time.Time
	start    time.Time
	done     int64
	last     time.Time // last terminal update
	reported int64     // tenths reported so far when not a terminal
	finished bool
}

func newProgress(w io.Writer, name string, total int64, tty bool) *progress {
	return &progress{w: w, name: name, total: total, tty: tty, now: time.Now, start: time.Now()}
}

// set advances the display to sent bytes.
func (p *progress) set(sent int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished {
		return
	}
	p.done = sent
	now := p.now()
	if p.tty {
		if now.Sub(p.last) >= 100*time.Millisecond || p.done == p.total {
			p.last = now
			fmt.Fprintf(p.w, "\r%s\x1b[K", p.line(now))
		}
		return
	}
	if step := p.done * 10 / max(p.total, 1); step > p.reported {
		p.reported = step
		fmt.Fprintln(p.w, p.line(now))
	}
}

// line is "uploading NAME: 3.0 MiB of 30.0 MiB (10%), 12.3 MiB/s".
func (p *progress) line(now time.Time) string {
	pct := int64(100)
	if p.total > 0 {
		pct = p.done * 100 / p.total
	}
	rate := "-"
	if el := now.Sub(p.start).Seconds(); el > 0 {
		rate = humanize.Bytes(int64(float64(p.done)/el)) + "/s"
	}
	return fmt.Sprintf("uploading %s: %s of %s (%d%%), %s", p.name, humanize.Bytes(p.done), humanize.Bytes(p.total), pct, rate)
}

// finish ends the display.
func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.finished && p.tty && p.done > 0 {
		fmt.Fprintln(p.w)
	}
	p.finished = true
}
