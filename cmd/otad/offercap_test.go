package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/apitest"
)

// TestOfferCapAcrossTwoProcesses: two otad processes share one
// PostgreSQL (and one blob store and online key, as replicas do); a
// rollout capped at 40 new offers a minute gets a burst of check-ins from
// 240 handsets split over both. The offers made in that minute stay
// within 10% of the cap (in fact at most the cap, the claim is atomic)
// and the cap is used (at least 90% of it), and the refused handsets are
// told to come back within the minute.
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
	r := createRollout(t, env, engineerToken(t, bin, dir), api.RolloutRequest{Release: "cloudmsg/CM-2026-001/update.zip",
		Stages: []float64{100}, MaxOffersPerMinute: &limit, Reason: "capped"})
	if r.State != "running" {
		t.Fatalf("rollout %s is %s, want running", r.ID, r.State)
	}

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	post := func(url, token string, in, out any) int {
		body, _ := json.Marshal(in)
		req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Error(err)
			return 0
		}
		defer resp.Body.Close()
		json.NewDecoder(resp.Body).Decode(out)
		return resp.StatusCode
	}
	tokens := make([]string, handsets)
	for i := range tokens {
		var e api.EnrollAnswer
		if c := post(bases[i%2]+"/api/v1/devices", "", api.EnrollBody{Model: "PX-7", Build: "7.2.0", Channel: "stable"}, &e); c != 201 {
			t.Fatalf("enroll: %d", c)
		}
		tokens[i] = e.Token
	}
	// Both replicas serve the published release and see the rollout
	// (refresh 200 ms), and the burst starts early in a minute so that it
	// does not straddle two budgets.
	waitSameTimestamp(t, bases)
	time.Sleep(time.Second)
	if s := time.Now().Second(); s > 40 {
		time.Sleep(time.Duration(61-s) * time.Second)
	}
	minute := time.Now().Truncate(time.Minute)
	f := false
	body := api.CheckInBody{Build: "7.2.0", Model: "PX-7", Channel: "stable", InstalledPatches: []string{},
		CloudMessaging: "auto_enabled", NumberEncryption: &f}
	var (
		mu      sync.Mutex
		offers  = map[int]int{} // per replica
		refused = map[string]int{}
		polls   []int
		wg      sync.WaitGroup
		sem     = make(chan struct{}, 32)
	)
	for i, tok := range tokens {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			var ans api.CheckInAnswer
			if c := post(bases[i%2]+"/api/v1/checkin", tok, body, &ans); c != 200 {
				t.Errorf("check-in: %d", c)
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
	if !time.Now().Truncate(time.Minute).Equal(minute) {
		t.Fatalf("the burst straddled a minute; its offers count against two budgets")
	}
	total := offers[0] + offers[1]
	t.Logf("offers: %d by one replica, %d by the other; refused %v", offers[0], offers[1], refused)
	if total > capPerMinute*110/100 || total < capPerMinute*90/100 {
		t.Errorf("%d offers in one minute, want %d within 10%%", total, capPerMinute)
	}
	if offers[0] == 0 || offers[1] == 0 {
		t.Errorf("offers %v: want both replicas to have made some", offers)
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
	deadline := time.Now().Add(30 * time.Second)
	for {
		first, same := get(bases[0]), true
		for _, b := range bases[1:] {
			same = same && bytes.Equal(get(b), first)
		}
		if same {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the replicas serve different timestamp.json after 30 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
