package api

import (
	"context"
	"net/http"
	"sync"
	"testing"

	"github.com/patchfleet/ota/server/api/openapitest"
)

// contract is the validator of openapi.yaml, loaded once for all tests.
var contract = sync.OnceValues(func() (*openapitest.Validator, error) {
	doc, err := LoadOpenAPI(context.Background(), openAPIYAML)
	if err != nil {
		return nil, err
	}
	return openapitest.New(doc)
})

// checkContract makes s validate every request it serves and every answer
// it gives against openapi.yaml, failing tb on a mismatch. A fuzz target
// must not fail its *testing.F, so fuzz tests wrap the server per input
// with withContract instead.
func checkContract(tb testing.TB, s *Server) {
	tb.Helper()
	if _, fuzz := tb.(*testing.F); fuzz {
		return
	}
	s.Echo().Pre(validator(tb).Middleware(tb))
}

// withContract returns h validating against openapi.yaml, failing t.
func withContract(t testing.TB, h http.Handler) http.Handler {
	return validator(t).Wrap(t, h)
}

func validator(tb testing.TB) *openapitest.Validator {
	tb.Helper()
	v, err := contract()
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

// offContract marks a request that breaks the contract on purpose: the
// server's answer to it is still validated.
func offContract(req *http.Request) { openapitest.OffContract(req, "negative test") }
