package main

import (
	"bytes"
	"context"
	"database/sql"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver, to read the recorded offers

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/api/wire"
)

// TestOfferCapAcrossTwoProcesses: two otad processes share one
// PostgreSQL (and one blob store and online key, as replicas do); a
// rollout capped at 40 new offers a minute gets a burst of check-ins from
// 240 handsets split over both. The offers made in each minute (by
// their recorded times: the burst may straddle a minute) stay within the
// cap, the claim is atomic, and the cap is used, and the refused handsets
// are told to come back within the minute.
func TestOfferCapAcrossTwoProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the otad binary")
	}
	dsn := apitest.PostgresDSN(t)
	t.Setenv("OTAD_DATABASE", dsn)
	t.Setenv("OTAD_ROLLOUT_REFRESH", "200ms")
	// The release is published through one replica; the other picks it
	// up at its next refresh, and until then refuses the rollout's
	// handsets (release_not_published).
	t.Setenv("OTAD_REFRESH_INTERVAL", "200ms")
	t.Setenv("OTAD_CHECKIN_RATE", "0")
	bin := buildOtad(t)
	dir := t.TempDir()
	a := startOtad(t, bin, dir)
	b := startOtad(t, bin, dir)
	bases := []string{"http://" + a.addr, "http://" + b.addr}
	publishPatch(t, bin, dir, bases[0])

	const capPerMinute, handsets = 40, 240
	env := &apitest.Env{URL: bases[0], Token: engineerToken(t, bin, dir)}
	limit := capPerMinute
	r := createRollout(t, env, engineerToken(t, bin, dir), wire.RolloutRequest{Release: "cloudmsg/CM-2026-001/update.zip",
		Stages: []float64{100}, MaxOffersPerMinute: &limit, Reason: "capped"})
	if r.State != "running" {
		t.Fatalf("rollout %s is %s, want running", r.ID, r.State)
	}

	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	var servers [2]*client.Client
	for i, base := range bases {
		var err error
		if servers[i], err = client.New(base, client.WithHTTPClient(hc)); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	// enroll enrolls a handset at server without a device key
	// (client.Enroll always signs with one) and returns its token.
	enroll := func(server *client.Client, build string) string {
		var e wire.EnrollAnswer
		if c, err := server.Do(ctx, http.MethodPost, wire.APIPrefix+"/devices",
			wire.EnrollBody{Model: "PX-7", Build: build, Channel: "stable"}, &e); err != nil || c != http.StatusCreated {
			t.Fatalf("enroll at %s: %d %v", server.BaseURL(), c, err)
		}
		return e.Token
	}
	tokens := make([]string, handsets)
	for i := range tokens {
		tokens[i] = enroll(servers[i%2], "7.2.0")
	}
	// Both replicas serve the published release and see the rollout
	// (refresh 200 ms): a handset already on the release's build is
	// refused build_not_older only by a replica that sees the rollout
	// (not_selected before), and takes nothing from the budget.
	waitSameTimestamp(t, bases)
	probe := enroll(servers[0], "7.5.0")
	newer := wire.CheckInBody{Build: "7.5.0", Model: "PX-7", Channel: "stable", InstalledPatches: []string{},
		CloudMessaging: "auto_enabled", NumberEncryption: new(bool)}
	for _, server := range servers {
		base := server.BaseURL()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			ans, err := server.WithToken(probe).CheckIn(ctx, newer)
			if err != nil {
				t.Fatalf("probe check-in at %s: %v", base, err)
			}
			if ans.NoOffer == "build_not_older" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s does not see the rollout after 2 minutes: the probe is refused %q", base, ans.NoOffer)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	f := false
	body := wire.CheckInBody{Build: "7.2.0", Model: "PX-7", Channel: "stable", InstalledPatches: []string{},
		CloudMessaging: "auto_enabled", NumberEncryption: &f}
	var (
		mu      sync.Mutex
		offers  = map[int]int{} // per replica
		refused = map[string]int{}
		polls   []int
		wg      sync.WaitGroup
		sem     = make(chan struct{}, 32)
	)
	// The first handset of each replica checks in alone: each replica
	// offers from the shared budget, which has room.
	for i := range 2 {
		ans, err := servers[i].WithToken(tokens[i]).CheckIn(ctx, body)
		if err != nil {
			t.Fatalf("the first check-in at %s: %v; want an offer", bases[i], err)
		}
		if ans.Offer == nil {
			t.Fatalf("the first check-in at %s: no_offer %q; want an offer", bases[i], ans.NoOffer)
		}
		offers[i]++
	}
	// Then the burst, which may straddle a minute boundary whatever its
	// start: the cap is checked per minute below, from the offers'
	// recorded times.
	for i, tok := range tokens[2:] {
		i += 2
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			ans, err := servers[i%2].WithToken(tok).CheckIn(ctx, body)
			if err != nil {
				t.Errorf("check-in: %v", err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if ans.Offer != nil {
				offers[i%2]++
			} else {
				refused[ans.NoOffer]++
				polls = append(polls, ans.PollAfterSeconds)
			}
		})
	}
	wg.Wait()
	total := offers[0] + offers[1]
	perMinute := offersPerMinute(t, dsn, r.ID)
	t.Logf("offers: %d by one replica, %d by the other, per minute %v; refused %v", offers[0], offers[1], perMinute, refused)
	recorded, busiest := 0, 0
	for m, n := range perMinute {
		recorded += n
		busiest = max(busiest, n)
		if n > capPerMinute {
			t.Errorf("%d offers in the minute from %s, want at most %d", n, m.Format(time.TimeOnly), capPerMinute)
		}
	}
	if recorded != total {
		t.Errorf("%d offers recorded, the handsets got %d", recorded, total)
	}
	// The burst's check-ins, six times the cap, fall in a few minutes at
	// most (each gives up after 10 s), so one of those minutes had more
	// than the cap: its budget is used up, and exactly.
	if busiest != capPerMinute {
		t.Errorf("the busiest minute had %d offers, want the cap of %d used", busiest, capPerMinute)
	}
	if refused["offer_cap_reached"] != handsets-total {
		t.Errorf("refusals %v, want %d offer_cap_reached", refused, handsets-total)
	}
	for _, p := range polls {
		if p < 50 || p > 70 {
			t.Errorf("a refused handset was told to poll after %d s, want about a minute", p)
			break
		}
	}
}

// engineerToken creates another release-engineer token in the database
// the otad processes share.
func engineerToken(tb testing.TB, bin, dir string) string {
	tb.Helper()
	// A unique name, in letters: a token name holds at most 6 digits.
	unique := strings.Map(func(r rune) rune { return r - '0' + 'a' }, strconv.FormatInt(time.Now().UnixNano(), 10))
	out, err := exec.Command(bin, "token", "create", "--name", "cap-test-"+unique,
		"--role", "release-engineer", "--data-dir", dir, "--log-format", "json").Output()
	if err != nil {
		tb.Fatalf("otad token create: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// waitSameTimestamp waits until every replica serves the same
// timestamp.json: each has loaded what the others published.
func waitSameTimestamp(tb testing.TB, bases []string) {
	tb.Helper()
	get := func(base string) []byte {
		resp, err := http.Get(base + "/tuf/timestamp.json")
		if err != nil {
			tb.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			tb.Fatalf("GET %s/tuf/timestamp.json: %d %v", base, resp.StatusCode, err)
		}
		return b
	}
	deadline := time.Now().Add(2 * time.Minute) // only bounds a hang
	for {
		first, same := get(bases[0]), true
		for _, b := range bases[1:] {
			same = same && bytes.Equal(get(b), first)
		}
		if same {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the replicas serve different timestamp.json after 2 minutes")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// offersPerMinute counts the offers of rollout id recorded in the
// database at dsn by the minute they were made in: each minute has its
// own budget.
func offersPerMinute(tb testing.TB, dsn, id string) map[time.Time]int {
	tb.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query("SELECT offered_at FROM device_rollouts WHERE rollout_id = $1", id)
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	out := map[time.Time]int{}
	for rows.Next() {
		var at time.Time
		if err := rows.Scan(&at); err != nil {
			tb.Fatal(err)
		}
		out[at.UTC().Truncate(time.Minute)]++
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}
