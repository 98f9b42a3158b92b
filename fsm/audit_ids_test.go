package fsm_test

import (
	"slices"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm"
)

// rangeResourceIDs is the definition AuditResourceIDs implements, walking
// every populated field by reflection. The FSM computes ids of records in
// commands, so the two must agree exactly on every node.
func rangeResourceIDs(msgs ...proto.Message) []string {
	set := map[string]bool{}
	var walk func(m protoreflect.Message, depth int)
	walk = func(m protoreflect.Message, depth int) {
		if depth > 4 {
			return
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			name := string(fd.Name())
			switch {
			case fd.IsList() || fd.IsMap():
			case fd.Kind() == protoreflect.StringKind && (name == "id" || strings.HasSuffix(name, "_id")):
				if v.String() != "" {
					set[v.String()] = true
				}
			case fd.Kind() == protoreflect.MessageKind && name != "payload":
				walk(v.Message(), depth+1)
			}
			return true
		})
	}
	for _, m := range msgs {
		walk(m.ProtoReflect(), 0)
	}
	out := make([]string, 0, len(set))
	for id := range set {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

func TestAuditResourceIDsMatchesTheReflectiveWalk(t *testing.T) {
	version := &pb.SecretVersion{
		Metadata: &pb.Metadata{Id: "mbsecver-1", ParentId: "mbsec-1", Name: "not-an-id"},
		Spec:     &pb.SecretVersionSpec{Payload: &pb.Payload{Entries: []*pb.PayloadEntry{{Key: "k", Value: &pb.PayloadEntry_StringValue{StringValue: "mbsec-in-a-payload"}}}}},
	}
	cases := []struct {
		name string
		msgs []proto.Message
		want []string
	}{
		{"version request and response", []proto.Message{&pb.CreateSecretVersionRequest{Version: version}, version}, []string{"mbsec-1", "mbsecver-1"}},
		{"payload read", []proto.Message{
			&pb.GetPayloadByKeyRequest{SecretId: "mbsec-2", Key: "password"},
			&pb.GetPayloadByKeyResponse{SecretId: "mbsec-2", VersionId: "mbsecver-9", Entry: &pb.PayloadEntry{Key: "password", Value: &pb.PayloadEntry_StringValue{StringValue: "hunter2"}}},
		}, []string{"mbsec-2", "mbsecver-9"}},
		{"binding", []proto.Message{&pb.CreateAccessBindingRequest{Binding: &pb.AccessBinding{
			Metadata: &pb.Metadata{Id: "accessbinding-1", ParentId: "project-1"},
			Spec:     &pb.AccessBindingSpec{ResourceId: "project-1", AccountId: "serviceaccount-1", Role: "viewer"},
		}}}, []string{"accessbinding-1", "project-1", "serviceaccount-1"}},
		{"empty", []proto.Message{&pb.GetSecretRequest{}}, []string{}},
	}
	for _, c := range cases {
		anys := make([]any, len(c.msgs))
		for i, m := range c.msgs {
			anys[i] = m
		}
		got := fsm.AuditResourceIDs([]string{"given-id"}, anys...)
		want := rangeResourceIDs(c.msgs...)
		want = append(want, "given-id")
		sort.Strings(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: got %v, the reflective walk gives %v", c.name, got, want)
		}
		wantExplicit := append(slices.Clone(c.want), "given-id")
		sort.Strings(wantExplicit)
		if !slices.Equal(got, wantExplicit) {
			t.Errorf("%s: got %v, want %v", c.name, got, wantExplicit)
		}
	}
}
