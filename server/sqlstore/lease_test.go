package sqlstore

import (
	"sync"
	"testing"
	"time"
)

// TestLease runs the lease suite against SQLite and, when
// OTA_TEST_POSTGRES_DSN is set, PostgreSQL.
func TestLease(t *testing.T) {
	runStoreSuite(t, []storeCase{
		{"LeaseRace", testLeaseRace},
		{"LeaseExpiryRenewalRelease", testLeaseExpiryRenewalRelease},
	})
}

// testLeaseRace has two replicas (two DBs on one database) acquire a
// free lease at the same instant, round after round, and, once it has
// expired, again: exactly one wins each time.
func testLeaseRace(t *testing.T, b backend) {
	dsn := b.newDSN(t)
	a := mustOpen(t, dsn)
	if _, err := a.Migrate(t.Context()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	replicas := []*DB{a, mustOpen(t, dsn)}
	holders := []string{"replica-a", "replica-b"}
	const ttl = 15 * time.Second
	for round := range 20 {
		// Rounds alternate a free lease (a new name) and an expired one
		// (the previous name, after its ttl).
		name := "race-" + string(rune('a'+round/2))
		now := t0.Add(time.Duration(round%2) * 2 * ttl)
		var wg sync.WaitGroup
		start := make(chan struct{})
		won := make([]bool, len(replicas))
		for i, db := range replicas {
			wg.Go(func() {
				<-start
				ok, err := db.Lease(name).Acquire(t.Context(), holders[i], ttl, now)
				if err != nil {
					t.Errorf("round %d: %s: acquire: %v", round, holders[i], err)
				}
				won[i] = ok
			})
		}
		close(start)
		wg.Wait()
		if won[0] == won[1] {
			t.Fatalf("round %d (%s at %s): replica a won %v, b won %v; want exactly one", round, name, now, won[0], won[1])
		}
		if n := countRows(t, a, "leases", "name = '"+name+"'"); n != 1 {
			t.Fatalf("round %d: %d rows for lease %s, want 1", round, n, name)
		}
	}
}

func testLeaseExpiryRenewalRelease(t *testing.T, b backend) {
	db, _ := mustDevices(t, b)
	ctx := t.Context()
	const ttl = 15 * time.Second
	lease, other := db.Lease("rollout-policies"), db.Lease("other-job")
	steps := []struct {
		name   string
		lease  *Lease
		holder string
		at     time.Duration // after t0
		want   bool
	}{
		{"first takes it", lease, "a", 0, true},
		{"another holder while it is held", lease, "b", ttl - time.Second, false},
		{"a renews before expiry", lease, "a", ttl - time.Second, true},
		{"b past the first expiry, within the renewal", lease, "b", ttl + time.Second, false},
		{"b at the renewed expiry", lease, "b", 2*ttl - time.Second, false},
		{"another lease is its own", other, "b", ttl, true},
		{"b once the renewal expired", lease, "b", 2*ttl + time.Millisecond, true},
		{"a lost it", lease, "a", 2*ttl + time.Second, false},
		{"b renews", lease, "b", 2*ttl + time.Second, true},
	}
	for _, s := range steps {
		got, err := s.lease.Acquire(ctx, s.holder, ttl, t0.Add(s.at))
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got != s.want {
			t.Errorf("%s: %s acquired %v at t0+%s, want %v", s.name, s.holder, got, s.at, s.want)
		}
	}
	// Releasing as a non-holder changes nothing; the holder's release
	// frees the lease at once, long before it expires.
	at := t0.Add(2*ttl + 2*time.Second)
	if err := lease.Release(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if ok, err := lease.Acquire(ctx, "a", ttl, at); err != nil || ok {
		t.Errorf("a acquired after a's release of b's lease: %v, %v; want false", ok, err)
	}
	if err := lease.Release(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if ok, err := lease.Acquire(ctx, "a", ttl, at); err != nil || !ok {
		t.Errorf("a acquired after b released: %v, %v; want true", ok, err)
	}
	if ok, err := other.Acquire(ctx, "c", ttl, t0.Add(ttl+time.Second)); err != nil || ok {
		t.Errorf("release of one lease freed another: c acquired %v, %v", ok, err)
	}
	if _, err := lease.Acquire(ctx, "", ttl, at); err == nil {
		t.Error("acquired with no holder, want an error")
	}
}
