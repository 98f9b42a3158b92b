package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"gopkg.in/yaml.v3"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// These tests run in-process and need no server.

func TestGeneratePassword(t *testing.T) {
	seen := map[string]bool{}
	for _, n := range []int{1, 32, 200} {
		pw, err := generatePassword(n)
		if err != nil {
			t.Fatal(err)
		}
		if len(pw) != n {
			t.Errorf("len = %d, want %d", len(pw), n)
		}
		for _, r := range pw {
			if !strings.ContainsRune(passwordAlphabet, r) {
				t.Errorf("char %q outside the alphabet", r)
			}
		}
		if seen[pw] {
			t.Errorf("password repeated: %q", pw)
		}
		seen[pw] = true
	}
}

func TestPayloadFlagsBuild(t *testing.T) {
	dir := t.TempDir()
	text := filepath.Join(dir, "text")
	bin := filepath.Join(dir, "bin")
	os.WriteFile(text, []byte("héllo\n"), 0o600)
	os.WriteFile(bin, []byte{0xff, 0x00, 0xfe}, 0o600)

	pf := payloadFlags{
		values:    []string{"a=b=c", "empty="},
		files:     []string{"t=" + text, "b=" + bin, "in=-"},
		generates: []string{"g", "h=5"},
	}
	p, err := pf.build(strings.NewReader("from stdin"))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		key    string
		str    string
		bin    []byte
		genLen int
	}{
		{key: "a", str: "b=c"},
		{key: "empty", str: ""},
		{key: "t", str: "héllo\n"},
		{key: "b", bin: []byte{0xff, 0x00, 0xfe}},
		{key: "in", str: "from stdin"},
		{key: "g", genLen: 32},
		{key: "h", genLen: 5},
	}
	if len(p.Entries) != len(want) {
		t.Fatalf("entries = %d, want %d", len(p.Entries), len(want))
	}
	for i, w := range want {
		e := p.Entries[i]
		if e.Key != w.key {
			t.Errorf("entry %d key = %q, want %q", i, e.Key, w.key)
		}
		switch {
		case w.bin != nil:
			if !bytes.Equal(e.GetBinaryValue(), w.bin) {
				t.Errorf("%s: binary = %x", w.key, e.GetBinaryValue())
			}
		case w.genLen > 0:
			if len(e.GetStringValue()) != w.genLen {
				t.Errorf("%s: generated length %d, want %d", w.key, len(e.GetStringValue()), w.genLen)
			}
		default:
			if _, ok := e.Value.(*mbv1.PayloadEntry_StringValue); !ok || e.GetStringValue() != w.str {
				t.Errorf("%s: value = %#v, want string %q", w.key, e.Value, w.str)
			}
		}
	}
}

func TestPayloadFlagsUsageErrors(t *testing.T) {
	cases := []payloadFlags{
		{values: []string{"hunter2"}},
		{files: []string{"k"}},
		{files: []string{"k=/nonexistent/file"}},
		{files: []string{"a=-", "b=-"}},
		{generates: []string{"k=0"}},
		{generates: []string{"k=abc"}},
		{generates: []string{"k=65537"}},
	}
	for _, pf := range cases {
		_, err := pf.build(strings.NewReader(""))
		name, msg, exit := classify(err)
		if exit != exitUsage || name != "USAGE" {
			t.Errorf("%+v: got %s exit %d, want USAGE exit 2", pf, name, exit)
		}
		if strings.Contains(msg, "hunter2") {
			t.Errorf("error message leaks the value: %q", msg)
		}
	}
}

func TestParseLabels(t *testing.T) {
	m, err := parseLabels([]string{"env=prod", "team=", "x=a=b"})
	if err != nil {
		t.Fatal(err)
	}
	if m["env"] != "prod" || m["team"] != "" || m["x"] != "a=b" || len(m) != 3 {
		t.Errorf("labels = %v", m)
	}
	for _, bad := range [][]string{{"novalue"}, {"=v"}, {"a=1", "a=2"}} {
		if _, err := parseLabels(bad); err == nil {
			t.Errorf("%q: want error", bad)
		}
	}
}

func TestWriteValue(t *testing.T) {
	str := func(s string) *mbv1.PayloadEntry {
		return &mbv1.PayloadEntry{Key: "k", Value: &mbv1.PayloadEntry_StringValue{StringValue: s}}
	}
	bin := &mbv1.PayloadEntry{Key: "k", Value: &mbv1.PayloadEntry_BinaryValue{BinaryValue: []byte{0, 0xff}}}
	cases := []struct {
		e    *mbv1.PayloadEntry
		tty  bool
		want string
		err  bool
	}{
		{str("v"), false, "v", false},
		{str("v\n"), false, "v\n", false},
		{str("v"), true, "v\n", false},
		{str("v\n"), true, "v\n", false},
		{bin, false, "\x00\xff", false},
		{bin, true, "", true},
		// Text a terminal would act on (an OSC 52 clipboard write, a C1
		// control) is refused there and written as is to a pipe.
		{str("pw\x1b]52;c;ZXZpbA==\x07"), true, "", true},
		{str("pw\u009b31m"), true, "", true},
		{str("pw\x1b]52;c;ZXZpbA==\x07"), false, "pw\x1b]52;c;ZXZpbA==\x07", false},
		{str("line 1\n\tline 2 é"), true, "line 1\n\tline 2 é\n", false},
	}
	for i, c := range cases {
		var buf bytes.Buffer
		err := writeValue(&buf, c.tty, c.e)
		if (err != nil) != c.err {
			t.Errorf("%d: err = %v", i, err)
		}
		if buf.String() != c.want {
			t.Errorf("%d: wrote %q, want %q", i, buf.String(), c.want)
		}
	}
}

func TestWriteSecretFileMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out")
	if err := os.WriteFile(path, []byte("old longer content"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeSecretFile(path, []byte("new")); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	fi, _ := os.Stat(path)
	if string(b) != "new" || fi.Mode().Perm() != 0o600 {
		t.Errorf("content %q mode %v, want \"new\" 0600", b, fi.Mode().Perm())
	}
}

func TestClassify(t *testing.T) {
	cases := []struct {
		err  error
		name string
		exit int
	}{
		{status.Error(codes.NotFound, "secret mbsec-x not found"), "NOT_FOUND", 3},
		{status.Error(codes.Unauthenticated, "x"), "UNAUTHENTICATED", 4},
		{status.Error(codes.PermissionDenied, "x"), "PERMISSION_DENIED", 4},
		{status.Error(codes.Unavailable, "x"), "UNAVAILABLE", 5},
		{status.Error(codes.DeadlineExceeded, "x"), "DEADLINE_EXCEEDED", 5},
		{status.Error(codes.InvalidArgument, "x"), "INVALID_ARGUMENT", 1},
		{status.Error(codes.AlreadyExists, "x"), "ALREADY_EXISTS", 1},
		{status.Error(codes.Aborted, "x"), "ABORTED", 1},
		{status.Error(codes.FailedPrecondition, "x"), "FAILED_PRECONDITION", 1},
		{status.Error(codes.Canceled, "x"), "CANCELLED", 1},
		{usageErr("bad"), "USAGE", 2},
		{errors.New(`unknown flag: --nope`), "USAGE", 2},
	}
	for _, c := range cases {
		name, _, exit := classify(c.err)
		if name != c.name || exit != c.exit {
			t.Errorf("%v: got %s/%d, want %s/%d", c.err, name, exit, c.name, c.exit)
		}
	}
}

func TestJSONAndYAMLUseProtoNames(t *testing.T) {
	s := &mbv1.Secret{
		Metadata: &mbv1.Metadata{Id: "mbsec-1", ParentId: "project-1", Name: "db", ResourceVersion: 3},
		Status:   &mbv1.SecretStatus{State: mbv1.State_ACTIVE, PrimaryVersionId: "mbsecver-1", VersionCount: 1},
	}
	js, err := marshalJSON(s)
	if err != nil {
		t.Fatal(err)
	}
	js2, _ := marshalJSON(s)
	if !bytes.Equal(js, js2) {
		t.Error("json output is not stable")
	}
	for _, want := range []string{`"parent_id": "project-1"`, `"primary_version_id": "mbsecver-1"`, `"state": "ACTIVE"`} {
		if !strings.Contains(string(js), want) {
			t.Errorf("json lacks %s:\n%s", want, js)
		}
	}
	if strings.Contains(string(js), "parentId") {
		t.Errorf("json uses camelCase names:\n%s", js)
	}
	ym, err := marshalYAML(s)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]map[string]any
	if err := yaml.Unmarshal(ym, &doc); err != nil {
		t.Fatalf("yaml: %v\n%s", err, ym)
	}
	if doc["metadata"]["id"] != "mbsec-1" || doc["metadata"]["parent_id"] != "project-1" || doc["status"]["state"] != "ACTIVE" {
		t.Errorf("yaml = %v", doc)
	}
	// metadata comes before status, as in the message.
	if strings.Index(string(ym), "metadata:") > strings.Index(string(ym), "status:") {
		t.Errorf("yaml field order lost:\n%s", ym)
	}
	if strings.Contains(string(ym), "{") {
		t.Errorf("yaml kept JSON flow style:\n%s", ym)
	}
}

func TestPayloadText(t *testing.T) {
	var buf bytes.Buffer
	payloadText([]*mbv1.PayloadEntry{
		{Key: "user", Value: &mbv1.PayloadEntry_StringValue{StringValue: "admin"}},
		{Key: "pem", Value: &mbv1.PayloadEntry_StringValue{StringValue: "a\nb\n"}},
		{Key: "bin", Value: &mbv1.PayloadEntry_BinaryValue{BinaryValue: []byte("hi")}},
	})(&buf)
	want := "user=admin\npem=\"a\\nb\\n\"\nbin:base64=aGk=\n"
	if buf.String() != want {
		t.Errorf("got %q, want %q", buf.String(), want)
	}
}

func TestWriteTableNoTrailingBlanks(t *testing.T) {
	var buf bytes.Buffer
	writeTable(&buf, []string{"ID", "DESCRIPTION"}, [][]string{{"mbsecver-1", ""}, {"mbsecver-22", "two\twords"}})
	want := "ID           DESCRIPTION\nmbsecver-1\nmbsecver-22  two words\n"
	if buf.String() != want {
		t.Errorf("got %q, want %q", buf.String(), want)
	}
}

func TestParseTTL(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"0":       0,
		"0d":      0,
		"30d":     30 * 24 * time.Hour,
		"1d12h":   36 * time.Hour,
		"12h":     12 * time.Hour,
		"90m":     90 * time.Minute,
		"1h30m":   90 * time.Minute,
		" 7d ":    7 * 24 * time.Hour,
		"2d30m5s": 48*time.Hour + 30*time.Minute + 5*time.Second,
	} {
		got, err := parseTTL(in)
		if err != nil || got != want {
			t.Errorf("parseTTL(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "-1h", "-1d", "1.5d", "1d-1h", "1d2d", "30", "soon", "106752d", "106751d24h"} {
		if _, err := parseTTL(in); err == nil {
			t.Errorf("parseTTL(%q): want an error", in)
		} else if name, _, exit := classify(err); name != "USAGE" || exit != exitUsage {
			t.Errorf("parseTTL(%q): %s exit %d, want USAGE exit 2", in, name, exit)
		}
	}
}

func TestCheckRole(t *testing.T) {
	for _, r := range []string{"mysterybox.viewer", "mysterybox.payload-viewer", "mysterybox.editor", "mysterybox.admin", "admin"} {
		if err := checkRole(r); err != nil {
			t.Errorf("checkRole(%q) = %v", r, err)
		}
	}
	for _, r := range []string{"", "viewer", "mysterybox.Admin", " admin", "mysterybox.payload_viewer"} {
		name, _, exit := classify(checkRole(r))
		if name != "USAGE" || exit != exitUsage {
			t.Errorf("checkRole(%q): %s exit %d, want USAGE exit 2", r, name, exit)
		}
	}
}
