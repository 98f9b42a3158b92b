package workload

import (
	"strings"
	"testing"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

func TestWrongStaleReadFlagsAnyOtherPayload(t *testing.T) {
	acked := version{id: "mbsecver-1", value: "v-1"}
	answer := func(versionID string, entry *pb.PayloadEntry) *pb.GetPayloadByKeyResponse {
		return &pb.GetPayloadByKeyResponse{SecretId: "mbsec-1", VersionId: versionID, Entry: entry}
	}
	str := func(s string) *pb.PayloadEntry {
		return &pb.PayloadEntry{Key: EntryKey, Value: &pb.PayloadEntry_StringValue{StringValue: s}}
	}
	if got := wrongStaleRead("mbsec-1", acked, answer("mbsecver-1", str("v-1"))); got != "" {
		t.Fatalf("the acknowledged payload was flagged: %s", got)
	}
	for name, r := range map[string]*pb.GetPayloadByKeyResponse{
		"another value":         answer("mbsecver-1", str("v-0")),
		"another version":       answer("mbsecver-2", str("v-1")),
		"no entry":              answer("mbsecver-1", nil),
		"a binary entry":        answer("mbsecver-1", &pb.PayloadEntry{Key: EntryKey, Value: &pb.PayloadEntry_BinaryValue{BinaryValue: []byte("v-1")}}),
		"an empty answer":       {},
		"an empty string value": answer("mbsecver-1", str("")),
	} {
		got := wrongStaleRead("mbsec-1", acked, r)
		if got == "" {
			t.Errorf("%s: not flagged", name)
			continue
		}
		for _, want := range []string{"mbsecver-1", "mbsec-1", `"v-1"`} {
			if !strings.Contains(got, want) {
				t.Errorf("%s: %q does not name %s", name, got, want)
			}
		}
	}
}
