package server

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/cluster"
	"github.com/mysterybox/mysterybox/fsm"
	"github.com/mysterybox/mysterybox/region"
	"github.com/mysterybox/mysterybox/store"
)

func str(k, v string) *pb.PayloadEntry {
	return &pb.PayloadEntry{Key: k, Value: &pb.PayloadEntry_StringValue{StringValue: v}}
}

func TestValidatePayload(t *testing.T) {
	many := &pb.Payload{}
	for i := 0; i < 101; i++ {
		many.Entries = append(many.Entries, str(fmt.Sprintf("k%d", i), "v"))
	}
	big := &pb.Payload{}
	for i := 0; i < 17; i++ {
		big.Entries = append(big.Entries, str(fmt.Sprintf("k%d", i), strings.Repeat("x", 65536)))
	}
	cases := []struct {
		name    string
		p       *pb.Payload
		inError string // field named in the message; "" means valid
	}{
		{"ok", &pb.Payload{Entries: []*pb.PayloadEntry{str("user", "a"), {Key: "cert.pem", Value: &pb.PayloadEntry_BinaryValue{BinaryValue: []byte{0, 1}}}}}, ""},
		{"empty", &pb.Payload{}, "p.entries"},
		{"too many entries", many, "p.entries"},
		{"bad key", &pb.Payload{Entries: []*pb.PayloadEntry{str("bad key!", "v")}}, "p.entries[0].key"},
		{"long key", &pb.Payload{Entries: []*pb.PayloadEntry{str(strings.Repeat("k", 257), "v")}}, "p.entries[0].key"},
		{"duplicate key", &pb.Payload{Entries: []*pb.PayloadEntry{str("a", "1"), str("a", "2")}}, "p.entries[1].key"},
		{"empty value", &pb.Payload{Entries: []*pb.PayloadEntry{str("a", "")}}, "p.entries[0].string_value"},
		{"oversize value", &pb.Payload{Entries: []*pb.PayloadEntry{str("a", strings.Repeat("x", 65537))}}, "p.entries[0].string_value"},
		{"oversize binary", &pb.Payload{Entries: []*pb.PayloadEntry{{Key: "b", Value: &pb.PayloadEntry_BinaryValue{BinaryValue: make([]byte, 65537)}}}}, "p.entries[0].binary_value"},
		{"no value", &pb.Payload{Entries: []*pb.PayloadEntry{{Key: "a"}}}, "p.entries[0]"},
		{"payload over 1 MiB", big, "p:"},
		{"max value ok", &pb.Payload{Entries: []*pb.PayloadEntry{str("a", strings.Repeat("x", 65536))}}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := validatePayload("p", tc.p)
			if tc.inError == "" {
				if err != nil {
					t.Fatalf("valid payload refused: %v", err)
				}
				return
			}
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.inError) {
				t.Fatalf("got %v, want INVALID_ARGUMENT naming %q", err, tc.inError)
			}
		})
	}
}

func TestValidateNamesAndLabels(t *testing.T) {
	if err := validateName("n", "ok name ü"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "a/b", "tab\there", strings.Repeat("x", 1025), "bad\xffutf8"} {
		if err := validateName("n", bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("name %q: %v, want INVALID_ARGUMENT", bad, err)
		}
	}
	if err := validateLabels("l", map[string]string{"env": "prod", "team-a_1": ""}); err != nil {
		t.Fatal(err)
	}
	tooMany := map[string]string{}
	for i := 0; i < 65; i++ {
		tooMany[fmt.Sprintf("k%d", i)] = "v"
	}
	for _, bad := range []map[string]string{{"Env": "x"}, {"1a": "x"}, {"env": strings.Repeat("v", 64)}, tooMany} {
		if err := validateLabels("l", bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("labels %v: %v, want INVALID_ARGUMENT", bad, err)
		}
	}
	if err := validateDescription("d", strings.Repeat("x", 1025)); status.Code(err) != codes.InvalidArgument {
		t.Errorf("long description: %v", err)
	}
}

func TestParsePage(t *testing.T) {
	p, err := parsePage(0, "", "secrets/project-1")
	if err != nil || p.size != defaultPageSize {
		t.Fatalf("default page: %+v %v", p, err)
	}
	for _, size := range []int32{-1, 1001} {
		if _, err := parsePage(size, "", "secrets/project-1"); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "page_size") {
			t.Errorf("page_size %d: %v", size, err)
		}
	}
	next := p.next("mbsec-abc")
	p, err = parsePage(10, next, "secrets/project-1")
	if err != nil || p.after != "mbsec-abc" {
		t.Fatalf("round trip token: %+v %v", p, err)
	}
	// A token of another list, or one not made by the server, is refused
	// rather than read as a position in this list (a page silently
	// skipped or empty).
	// A token of an older release (the bare base64url of the last key) is
	// still read during an upgrade, if it has the shape of this list's keys.
	legacy, err := parsePage(10, base64.RawURLEncoding.EncodeToString([]byte("mbsec-abc")), "secrets/project-1")
	if err != nil || legacy.after != "mbsec-abc" {
		t.Fatalf("a token of an older release: %+v %v", legacy, err)
	}
	if _, err := base64.RawURLEncoding.DecodeString(next); err == nil {
		t.Fatalf("token %q: an older node (which decoded tokens as bare base64url) must fail on it, not read it as a position", next)
	}
	for name, c := range map[string]struct{ token, scope string }{
		"not base64":               {"!!!", "secrets/project-1"},
		"another project's":        {next, "secrets/project-2"},
		"another collection's":     {next, "projects"},
		"made up":                  {"Z2FyYmFnZQ", "secrets/project-1"},
		"empty position":           {p.next(""), "secrets/project-1"},
		"old form, another list":   {base64.RawURLEncoding.EncodeToString([]byte("project-abc")), "secrets/project-1"},
		"old form, 8-byte for ids": {base64.RawURLEncoding.EncodeToString([]byte("12345678")), "accounts"},
	} {
		if _, err := parsePage(10, c.token, c.scope); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "page_token") {
			t.Errorf("%s: %v, want INVALID_ARGUMENT naming page_token", name, err)
		}
	}
}

func TestValidateUpdateSecretMask(t *testing.T) {
	req := &pb.UpdateSecretRequest{Secret: &pb.Secret{Metadata: &pb.Metadata{Id: "mbsec-1"}, Spec: &pb.SecretSpec{}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"spec.primary_version_id"}}}
	paths, err := validateUpdateSecret(req)
	if err != nil || len(paths) != 1 {
		t.Fatalf("unpin via mask: %v %v", paths, err)
	}
	req.UpdateMask.Paths = []string{"status.state"}
	if _, err := validateUpdateSecret(req); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad path: %v", err)
	}
	req.UpdateMask = nil
	if _, err := validateUpdateSecret(req); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("nothing to update: %v", err)
	}
	req.Secret.Spec.Description = "d"
	if paths, err := validateUpdateSecret(req); err != nil || len(paths) != 1 || paths[0] != "spec.description" {
		t.Fatalf("implicit mask: %v %v", paths, err)
	}
}

func TestErrorTable(t *testing.T) {
	cases := []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("x: %w", store.ErrNotFound), codes.NotFound},
		{fmt.Errorf("x: %w", fsm.ErrAlreadyExists), codes.AlreadyExists},
		{fmt.Errorf("x: %w", fsm.ErrConflict), codes.Aborted},
		{fmt.Errorf("x: %w", fsm.ErrFailedPrecondition), codes.FailedPrecondition},
		{fmt.Errorf("x: %w", cluster.ErrNotLeader), codes.Unavailable},
		{fmt.Errorf("x: %w", cluster.ErrUnknownOutcome), codes.Unavailable},
		{fmt.Errorf("x: %w", region.ErrTampered), codes.DataLoss},
		{status.Error(codes.PermissionDenied, "kept"), codes.PermissionDenied},
		{errors.New("disk on fire"), codes.Internal},
	}
	for _, tc := range cases {
		if got := status.Code(toStatus(tc.err)); got != tc.code {
			t.Errorf("%v: %v, want %v", tc.err, got, tc.code)
		}
	}
}

func TestIDsSortByCreation(t *testing.T) {
	a := newID(prefixSecret)
	b := newID(prefixSecret)
	if !strings.HasPrefix(a, "mbsec-") || len(a) != len("mbsec-")+21 || a == b {
		t.Fatalf("ids %q %q", a, b)
	}
}

func TestCodeName(t *testing.T) {
	for c, want := range map[codes.Code]string{codes.OK: "OK", codes.NotFound: "NOT_FOUND", codes.DeadlineExceeded: "DEADLINE_EXCEEDED", codes.PermissionDenied: "PERMISSION_DENIED", codes.DataLoss: "DATA_LOSS"} {
		if got := codeName(c); got != want {
			t.Errorf("codeName(%v) = %q, want %q", c, got, want)
		}
	}
}
