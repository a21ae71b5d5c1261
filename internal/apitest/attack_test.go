package apitest_test

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
)

// clock is a settable time source for the repository.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// attackRepo is a repository with two published releases of the patch, and
// the metadata and artifact of the first, captured to replay.
type attackRepo struct {
	env      *apitest.Env
	proxy    *apitest.Proxy
	root1    []byte
	old, cur struct {
		timestamp, snapshot, targets []byte
		snapshotName, targetsName    string
		artifact                     []byte
	}
}

func fetch(tb testing.TB, env *apitest.Env, name string) []byte {
	tb.Helper()
	f, err := env.Repo.MetadataFile(context.Background(), name)
	if err != nil {
		tb.Fatal(err)
	}
	return f.Data
}

func newAttackRepo(t *testing.T) *attackRepo {
	t.Helper()
	a := &attackRepo{env: apitest.Start(t, apitest.Options{})}
	es := apitest.NewEngineers(t, 3)
	a.env.Ceremony(t, es, 2)
	a.root1 = a.env.RootBytes(t, 1)
	capture := func(artifact []byte) (c struct {
		timestamp, snapshot, targets []byte
		snapshotName, targetsName    string
		artifact                     []byte
	}) {
		st, err := a.env.Repo.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range st.Roles {
			switch r.Role {
			case "snapshot":
				c.snapshotName = itoa(r.Version) + ".snapshot.json"
			case "targets":
				c.targetsName = itoa(r.Version) + ".targets.json"
			}
		}
		c.timestamp = fetch(t, a.env, "timestamp.json")
		c.snapshot = fetch(t, a.env, c.snapshotName)
		c.targets = fetch(t, a.env, c.targetsName)
		c.artifact = artifact
		return c
	}
	v1 := randomBytes(t, 256<<10)
	a.env.Publish(t, patchPath, v1, es[0], es[1])
	a.old = capture(v1)
	v2 := randomBytes(t, 256<<10)
	a.env.Publish(t, patchPath, v2, es[1], es[2])
	a.cur = capture(v2)
	a.proxy = apitest.NewProxy(t, a.env.URL)
	return a
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// TestClientsRefuseAttacks serves the reference client what an attacker
// controlling the network or a mirror could, and checks it refuses each.
func TestClientsRefuseAttacks(t *testing.T) {
	a := newAttackRepo(t)
	tests := []struct {
		name string
		// trustCurrent: the client has already seen the current state.
		trustCurrent bool
		mutate       func(path string, body []byte) []byte
		wantErr      string
	}{
		{
			name:         "rollback: an older timestamp",
			trustCurrent: true,
			mutate: func(path string, body []byte) []byte {
				if strings.HasSuffix(path, "/timestamp.json") {
					return a.old.timestamp
				}
				return body
			},
			wantErr: "must be >=",
		},
		{
			// A client that already trusts the current snapshot does not
			// fetch it again, so the attack targets one that does.
			name: "rollback: an older snapshot under the current name",
			mutate: func(path string, body []byte) []byte {
				if strings.HasSuffix(path, "/"+a.cur.snapshotName) {
					return a.old.snapshot
				}
				return body
			},
			wantErr: "hash verification failed",
		},
		{
			name: "mix-and-match: the current snapshot with older targets",
			mutate: func(path string, body []byte) []byte {
				if strings.HasSuffix(path, "/"+a.cur.targetsName) {
					return a.old.targets
				}
				return body
			},
			wantErr: "hash verification failed",
		},
		{
			name: "tampered artifact",
			mutate: func(path string, body []byte) []byte {
				if strings.HasPrefix(path, "/targets/") {
					b := bytes.Clone(body)
					b[len(b)/2] ^= 0x01
					return b
				}
				return body
			},
			wantErr: "hash verification failed",
		},
		{
			name: "substituted artifact: the previous release's bytes",
			mutate: func(path string, body []byte) []byte {
				if strings.HasPrefix(path, "/targets/") {
					return a.old.artifact
				}
				return body
			},
			wantErr: "hash verification failed",
		},
		{
			name: "endless data: an artifact longer than its metadata says",
			mutate: func(path string, body []byte) []byte {
				if strings.HasPrefix(path, "/targets/") {
					return append(bytes.Clone(body), make([]byte, 1<<20)...)
				}
				return body
			},
			wantErr: "larger than expected",
		},
		{
			name: "endless data: an oversized timestamp",
			mutate: func(path string, body []byte) []byte {
				if strings.HasSuffix(path, "/timestamp.json") {
					return append(bytes.Clone(body), bytes.Repeat([]byte(" "), 64<<10)...)
				}
				return body
			},
			wantErr: "larger than expected",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.trustCurrent {
				a.proxy.Mutate(nil)
				if err := apitest.NewClientAt(t, a.proxy.URL, a.root1, dir).Refresh(); err != nil {
					t.Fatalf("honest refresh: %v", err)
				}
			}
			a.proxy.Mutate(tc.mutate)
			defer a.proxy.Mutate(nil)
			up := apitest.NewClientAt(t, a.proxy.URL, a.root1, dir)
			err := up.Refresh()
			if err == nil {
				var info any
				ti, terr := up.GetTargetInfo(patchPath)
				if terr == nil {
					_, data, derr := up.DownloadTarget(ti, "", "")
					err = derr
					info = data
				} else {
					err = terr
				}
				if err == nil {
					t.Fatalf("client accepted the attack (got %d bytes)", len(info.([]byte)))
				}
			}
			t.Logf("refused: %v", err)
			if tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not mention %q", err, tc.wantErr)
			}
			// With the attacker gone, the same client recovers.
			a.proxy.Mutate(nil)
			up = apitest.NewClientAt(t, a.proxy.URL, a.root1, dir)
			if err := up.Refresh(); err != nil {
				t.Fatalf("honest refresh after the attack: %v", err)
			}
			ti, err := up.GetTargetInfo(patchPath)
			if err != nil {
				t.Fatal(err)
			}
			if _, data, err := up.DownloadTarget(ti, "", ""); err != nil || !bytes.Equal(data, a.cur.artifact) {
				t.Fatalf("honest download after the attack: %v", err)
			}
		})
	}
}

// TestFreezeAndResign checks both sides of timestamp expiry: a client
// refuses a repository frozen past its timestamp's expiry, and the
// server's re-signing keeps clients working past the original expiry.
func TestFreezeAndResign(t *testing.T) {
	clk := &clock{now: time.Now().UTC().Truncate(time.Second)}
	env := apitest.Start(t, apitest.Options{Now: clk.Now})
	es := apitest.NewEngineers(t, 2)
	env.Ceremony(t, es, 2)
	env.Publish(t, patchPath, randomBytes(t, 4096), es...)
	root1 := env.RootBytes(t, 1)
	st, err := env.Repo.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var tsExpires time.Time
	for _, r := range st.Roles {
		if r.Role == "timestamp" {
			tsExpires = r.Expires
		}
	}
	pastExpiry := tsExpires.Add(time.Hour)

	t.Run("frozen repository is refused", func(t *testing.T) {
		up := apitest.NewClient(t, env.URL, root1)
		up.UnsafeSetRefTime(pastExpiry)
		err := up.Refresh()
		if err == nil {
			t.Fatal("client accepted a timestamp past its expiry")
		}
		if !strings.Contains(err.Error(), "expired") {
			t.Errorf("error %q does not say expired", err)
		}
	})

	t.Run("re-signing keeps clients working", func(t *testing.T) {
		if wrote, err := env.Repo.Resign(context.Background()); err != nil || wrote {
			t.Fatalf("Resign with a fresh timestamp: wrote=%v err=%v, want nothing written", wrote, err)
		}
		clk.Advance(manifests.DefaultExpiry().Timestamp/2 + time.Minute)
		wrote, err := env.Repo.Resign(context.Background())
		if err != nil || !wrote {
			t.Fatalf("Resign past half the timestamp's life: wrote=%v err=%v, want a new timestamp", wrote, err)
		}
		up := apitest.NewClient(t, env.URL, root1)
		up.UnsafeSetRefTime(pastExpiry)
		if err := up.Refresh(); err != nil {
			t.Fatalf("client past the original expiry: %v", err)
		}
		if _, err := up.GetTargetInfo(patchPath); err != nil {
			t.Fatal(err)
		}
	})
}
