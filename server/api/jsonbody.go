package api

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/server/errs"
)

// maxJSONDepth bounds the nesting of a body: the deepest the API takes is
// root_keys[0].keyval.public; the rest is room for TUF's unrecognized
// fields.
const maxJSONDepth = 32

// decodeJSON decodes a JSON object body into v, a pointer to a struct,
// strictly: the Content-Type must be application/json (415 otherwise), and
// the body one object whose keys each match a json tag of the struct
// exactly (encoding/json would match "Model" or "MODEL" to "model"), at
// every depth, with no key twice (encoding/json keeps the last) and
// nothing after it. Refusals are 400s that name the field, in JSON terms:
// no Go type name reaches a client.
//
// A check of the token stream against v's type does this before
// encoding/json decodes; encoding/json/v2 would do it in one pass but
// needs GOEXPERIMENT=jsonv2 in Go 1.26.
func decodeJSON(c echo.Context, v any) error {
	if err := requireJSON(c.Request()); err != nil {
		return err
	}
	data, err := io.ReadAll(c.Request().Body) // bounded by bodyLimit
	if err != nil {
		if mbe := new(http.MaxBytesError); errors.As(err, &mbe) {
			return mbe
		}
		return fmt.Errorf("%w: body: %w", errs.ErrInvalid, err)
	}
	return decodeJSONBytes(data, v)
}

// decodeJSONBytes is decodeJSON once the body is read.
func decodeJSONBytes(data []byte, v any) error {
	if err := checkJSON(data, reflect.TypeOf(v).Elem()); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		// checkJSON has seen to every case encoding/json refuses; this is a
		// safety net that still names no Go type.
		if te := new(json.UnmarshalTypeError); errors.As(err, &te) {
			return &errs.FieldError{Field: te.Field, Message: "want " + jsonKind(te.Type)}
		}
		if fe := unknownField(err); fe != nil {
			return fe
		}
		return fmt.Errorf("%w: body: not what this endpoint takes", errs.ErrInvalid)
	}
	return nil
}

// requireJSON answers 415 unless the request says its body is JSON;
// parameters (charset) are allowed.
func requireJSON(r *http.Request) error {
	ct := r.Header.Get(echo.HeaderContentType)
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != echo.MIMEApplicationJSON {
		return echo.NewHTTPError(http.StatusUnsupportedMediaType, "Content-Type must be application/json")
	}
	return nil
}

// checkJSON checks that data is one JSON object that decodes into t
// without a case-folded key match, a duplicate key, an unknown field or a
// value of the wrong kind.
//
// A body that json.Valid accepts (the usual case) is walked with
// validTokens; any other with json.Decoder, whose errors say where the
// syntax broke.
func checkJSON(data []byte, t reflect.Type) error {
	var w jsonWalker
	if json.Valid(data) {
		w.dec = &validTokens{data: data}
	} else {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		w.dec = dec
	}
	tok, err := w.dec.Token()
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: empty body, want JSON", errs.ErrInvalid)
	}
	if err != nil {
		return syntaxError(err)
	}
	if tok != json.Delim('{') {
		return fmt.Errorf("%w: body: want a JSON object", errs.ErrInvalid)
	}
	if err := w.object("", t, 1); err != nil {
		return err
	}
	if _, err := w.dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: body: trailing data after the JSON object", errs.ErrInvalid)
	}
	return nil
}

func syntaxError(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: body: truncated JSON", errs.ErrInvalid)
	}
	// json.SyntaxError says what was wrong where ("invalid character 'x'
	// looking for beginning of value"), never a Go type.
	return fmt.Errorf("%w: body: %s", errs.ErrInvalid, strings.TrimPrefix(err.Error(), "json: "))
}

// jsonWalker reads a body token by token against the Go type it is
// meant for.
type jsonWalker struct {
	dec tokenReader
}

// tokenReader is json.Decoder's Token, with UseNumber.
type tokenReader interface {
	Token() (json.Token, error)
}

// validTokens reads the tokens of data that json.Valid accepted, as
// json.Decoder.Token with UseNumber does, without a scanner: the syntax
// is known to be right, so it only has to find where each token ends.
// Check-in bodies are most of a busy server's requests, and
// json.Decoder's scanner was half of the strict check's CPU.
type validTokens struct {
	data []byte
	pos  int
}

func (v *validTokens) Token() (json.Token, error) {
	for v.pos < len(v.data) {
		c := v.data[v.pos]
		switch c {
		case ' ', '\t', '\n', '\r', ',', ':':
			v.pos++
		case '{', '}', '[', ']':
			v.pos++
			return json.Delim(c), nil
		case '"':
			return v.string()
		case 't':
			v.pos += len("true")
			return true, nil
		case 'f':
			v.pos += len("false")
			return false, nil
		case 'n':
			v.pos += len("null")
			return nil, nil
		default: // a number
			start := v.pos
			for v.pos < len(v.data) && strings.IndexByte("+-.0123456789eE", v.data[v.pos]) >= 0 {
				v.pos++
			}
			return json.Number(v.data[start:v.pos]), nil
		}
	}
	return nil, io.EOF
}

// string reads the string at v.pos. One with escapes, or with bytes that
// are not UTF-8 (which json.Decoder replaces with U+FFFD), is unquoted by
// encoding/json so that the answer is the same.
func (v *validTokens) string() (json.Token, error) {
	start, i := v.pos, v.pos+1
	plain := true
	for v.data[i] != '"' {
		switch c := v.data[i]; {
		case c == '\\':
			plain = false
			i += 2
		case c >= utf8.RuneSelf:
			plain = false
			i++
		default:
			i++
		}
	}
	v.pos = i + 1
	if plain {
		return string(v.data[start+1 : i]), nil
	}
	var s string
	if err := json.Unmarshal(v.data[start:v.pos], &s); err != nil {
		return nil, err
	}
	return s, nil
}

var (
	timeType        = reflect.TypeFor[time.Time]()
	anyType         = reflect.TypeFor[any]()
	unmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	textType        = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// value checks the value that starts with tok against t; depth is that of
// the object or array it is in.
func (w *jsonWalker) value(path string, t reflect.Type, tok json.Token, depth int) error {
	if tok == nil {
		return nil // null leaves the zero value, as in encoding/json
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if _, ok := tok.(json.Delim); ok && depth >= maxJSONDepth {
		return fmt.Errorf("%w: body: nested deeper than %d levels", errs.ErrInvalid, maxJSONDepth)
	}
	pt := reflect.PointerTo(t)
	switch {
	case t == timeType:
		s, ok := tok.(string)
		if !ok || new(time.Time).UnmarshalText([]byte(s)) != nil {
			return want(path, "an RFC 3339 time")
		}
		return nil
	case t.Kind() == reflect.Interface:
		return w.skip(path, tok, depth)
	case pt.Implements(unmarshalerType) && t.Kind() != reflect.Struct:
		// The type decodes itself from any JSON; there is nothing to
		// check beyond duplicate keys. (Structs that decode themselves
		// are checked against their fields: see structFields.open.)
		return w.skip(path, tok, depth)
	case pt.Implements(textType) && !pt.Implements(unmarshalerType):
		if _, ok := tok.(string); !ok {
			return want(path, "a string")
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		if tok != json.Delim('{') {
			return want(path, "an object")
		}
		return w.object(path, t, depth+1)
	case reflect.Map:
		if tok != json.Delim('{') {
			return want(path, "an object")
		}
		return w.members(path, nil, t.Elem(), depth+1)
	case reflect.Slice, reflect.Array:
		if t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8 {
			if _, ok := tok.(string); !ok {
				return want(path, "a base64 string")
			}
			return nil
		}
		if tok != json.Delim('[') {
			return want(path, "an array")
		}
		for i := 0; ; i++ {
			tok, err := w.dec.Token()
			if err != nil {
				return syntaxError(err)
			}
			if tok == json.Delim(']') {
				return nil
			}
			if err := w.value(path+"["+strconv.Itoa(i)+"]", t.Elem(), tok, depth+1); err != nil {
				return err
			}
		}
	case reflect.String:
		if _, ok := tok.(string); !ok {
			return want(path, "a string")
		}
	case reflect.Bool:
		if _, ok := tok.(bool); !ok {
			return want(path, "true or false")
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if n, ok := tok.(json.Number); !ok || parseErr(strconv.ParseInt(string(n), 10, t.Bits())) {
			return want(path, "a whole number")
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if n, ok := tok.(json.Number); !ok || parseErr(strconv.ParseUint(string(n), 10, t.Bits())) {
			return want(path, "a whole number, 0 or more")
		}
	case reflect.Float32, reflect.Float64:
		if n, ok := tok.(json.Number); !ok || parseErr(strconv.ParseFloat(string(n), t.Bits())) {
			return want(path, "a number")
		}
	default:
		return fmt.Errorf("%w: %s: not accepted", errs.ErrInvalid, path)
	}
	return nil
}

func parseErr[T any](_ T, err error) bool { return err != nil }

func want(path, what string) error {
	if path == "" {
		return fmt.Errorf("%w: body: want %s", errs.ErrInvalid, what)
	}
	return &errs.FieldError{Field: path, Message: "want " + what}
}

// object checks the members of an object meant for struct t; the opening
// brace has been read.
func (w *jsonWalker) object(path string, t reflect.Type, depth int) error {
	return w.members(path, fieldsOf(t), nil, depth)
}

// members checks the members of an object up to its closing brace: those
// of a struct when fields is set, else those of a map with values of type
// elem (any key).
func (w *jsonWalker) members(path string, fields *structFields, elem reflect.Type, depth int) error {
	seen := map[string]bool{}
	for {
		tok, err := w.dec.Token()
		if err != nil {
			return syntaxError(err)
		}
		if tok == json.Delim('}') {
			return nil
		}
		key := tok.(string) // the decoder allows nothing else here
		p := key
		if path != "" {
			p = path + "." + key
		}
		if seen[key] {
			return &errs.FieldError{Field: p, Message: fmt.Sprintf("duplicate key %q", key)}
		}
		seen[key] = true
		t := elem
		if fields != nil {
			if t = fields.byName[key]; t == nil {
				if err := fields.unknown(p, key); err != nil {
					return err
				}
				t = anyType
			}
		}
		tok, err = w.dec.Token()
		if err != nil {
			return syntaxError(err)
		}
		if err := w.value(p, t, tok, depth); err != nil {
			return err
		}
	}
}

// skip checks a value of any shape for duplicate keys and depth.
func (w *jsonWalker) skip(path string, tok json.Token, depth int) error {
	switch tok {
	case json.Delim('{'):
		return w.members(path, nil, anyType, depth+1)
	case json.Delim('['):
		return w.value(path, reflect.TypeFor[[]any](), tok, depth)
	}
	return nil
}

// structFields are the JSON names of a struct's fields, as encoding/json
// sees them.
type structFields struct {
	byName map[string]reflect.Type
	// open is true for a type that decodes itself and keeps members it
	// does not know (go-tuf's keys keep them as UnrecognizedFields):
	// those are accepted, as the TUF specification asks.
	open bool
}

// unknown refuses the member key of an object, unless the struct is open
// and key matches no field even with case folded.
func (f *structFields) unknown(path, key string) error {
	for name := range f.byName {
		if strings.EqualFold(name, key) {
			return &errs.FieldError{Field: path,
				Message: fmt.Sprintf("unknown field %q: field names are case-sensitive, want %q", key, name)}
		}
	}
	if f.open {
		return nil
	}
	return &errs.FieldError{Field: path, Message: fmt.Sprintf("unknown field %q: this server does not accept it", key)}
}

var fieldCache sync.Map // reflect.Type -> *structFields

func fieldsOf(t reflect.Type) *structFields {
	if f, ok := fieldCache.Load(t); ok {
		return f.(*structFields)
	}
	f := &structFields{byName: map[string]reflect.Type{}, open: reflect.PointerTo(t).Implements(unmarshalerType)}
	addFields(f.byName, t)
	fieldCache.Store(t, f)
	return f
}

// addFields adds t's fields to m by JSON name, flattening untagged
// embedded structs as encoding/json does (the outer field wins).
func addFields(m map[string]reflect.Type, t reflect.Type) {
	var embedded []reflect.Type
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		ft := f.Type
		if f.Anonymous && name == "" {
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				embedded = append(embedded, ft)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	for _, et := range embedded {
		inner := map[string]reflect.Type{}
		addFields(inner, et)
		for name, ft := range inner {
			if _, ok := m[name]; !ok {
				m[name] = ft
			}
		}
	}
}

// jsonKind names what a JSON client must send for a Go type.
func jsonKind(t reflect.Type) string {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == nil:
		return "another value"
	case t == timeType:
		return "an RFC 3339 time"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	}
	return "another value"
}
