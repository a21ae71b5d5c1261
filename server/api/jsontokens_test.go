package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"
)

// FuzzValidTokens checks validTokens against json.Decoder.Token (with
// UseNumber) on every body json.Valid accepts: the same tokens in the
// same order, then io.EOF.
func FuzzValidTokens(f *testing.F) {
	for _, s := range []string{
		validCheckIn,
		`{}`, `[]`, `""`, `0`, `-0.5e+10`, `true`, `null`,
		` { "a" : [ 1 , -2.5E-3 , true , false , null , { "b" : "x" } ] , "c" : { } } `,
		`{"k":"\u006dodel","\"":"\\","t":"\t\n\u2028"}`,
		`{"é":"ü","x":"a\u00e9b"}`,
		"{\"bad\":\"\xff\xfe\",\"half\":\"\xe2\x82\"}",
		`{"model":"PX-7","model":"PX-8"}`,
		`[[[[[]]]],{"a":{"b":{"c":[1e309,123456789012345678901234567890]}}}]`,
		"{\"a\":1}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			return
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		fast := &validTokens{data: data}
		for i := 0; ; i++ {
			want, werr := dec.Token()
			got, gerr := fast.Token()
			if errors.Is(werr, io.EOF) {
				if !errors.Is(gerr, io.EOF) {
					t.Fatalf("%q: token %d: got %#v, %v after the end, want io.EOF", data, i, got, gerr)
				}
				return
			}
			if werr != nil {
				t.Fatalf("%q: json.Decoder refused a body json.Valid accepts: %v", data, werr)
			}
			if gerr != nil || !reflect.DeepEqual(got, want) {
				t.Fatalf("%q: token %d: got %#v (%T), %v; want %#v (%T)", data, i, got, got, gerr, want, want)
			}
		}
	})
}
