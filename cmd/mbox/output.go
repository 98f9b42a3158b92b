package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"gopkg.in/yaml.v3"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// emit prints m in the selected format; text renders the text form.
func (a *app) emit(m proto.Message, text func(w io.Writer)) error {
	var out []byte
	switch a.format {
	case "json":
		b, err := marshalJSON(m)
		if err != nil {
			return localErr(codes.Internal, "encode json: %v", err)
		}
		out = b
	case "yaml":
		b, err := marshalYAML(m)
		if err != nil {
			return localErr(codes.Internal, "encode yaml: %v", err)
		}
		out = b
	default:
		var buf bytes.Buffer
		text(&buf)
		out = buf.Bytes()
	}
	if _, err := a.stdout.Write(out); err != nil {
		return localErr(codes.Unknown, "write stdout: %v", err)
	}
	return nil
}

// marshalJSON is protobuf JSON with proto field names. protojson varies its
// whitespace on purpose; json.Indent normalises it so output is stable.
func marshalJSON(m proto.Message) ([]byte, error) {
	raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return nil, err
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

// marshalYAML converts the JSON form to YAML through a yaml.Node, which keeps
// the field order of the JSON (a map would sort it).
func marshalYAML(m proto.Message) ([]byte, error) {
	js, err := marshalJSON(m)
	if err != nil {
		return nil, err
	}
	return jsonToYAML(js)
}

// resetStyle drops the flow/quoted styles inherited from JSON so the encoder
// writes block YAML and quotes only where YAML needs it.
func resetStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		resetStyle(c)
	}
}

// kv is one "key: value" line.
type kv struct{ k, v string }

// writeKV prints aligned "key: value" lines.
func writeKV(w io.Writer, rows []kv) {
	width := 0
	for _, r := range rows {
		width = max(width, len(r.k))
	}
	for _, r := range rows {
		line := fmt.Sprintf("%-*s %s", width+1, r.k+":", r.v)
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
}

// writeTable prints a header and rows in aligned columns, without the
// trailing blanks tabwriter leaves when the last cell is empty.
func writeTable(w io.Writer, header []string, rows [][]string) {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		for i := range r {
			r[i] = oneLine(r[i])
		}
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
	for _, line := range strings.SplitAfter(buf.String(), "\n") {
		if line != "" {
			fmt.Fprintln(w, strings.TrimRight(line, " \n"))
		}
	}
}

// oneLine keeps a table cell on one line and its tabs out of the layout.
func oneLine(s string) string {
	return strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(s)
}

func ts(t *timestamppb.Timestamp) string {
	if t == nil || (t.Seconds == 0 && t.Nanos == 0) {
		return ""
	}
	return t.AsTime().UTC().Format(time.RFC3339)
}

func labels(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

func i64(n int64) string  { return strconv.FormatInt(n, 10) }
func u64(n uint64) string { return strconv.FormatUint(n, 10) }

// ---------------------------------------------------------------- resources

func projectText(p *mbv1.Project) func(io.Writer) {
	return func(w io.Writer) {
		md := p.GetMetadata()
		writeKV(w, []kv{
			{"id", md.GetId()},
			{"name", md.GetName()},
			{"description", p.GetSpec().GetDescription()},
			{"region", p.GetStatus().GetRegion()},
			{"secret_count", i64(p.GetStatus().GetSecretCount())},
			{"labels", labels(md.GetLabels())},
			{"resource_version", i64(md.GetResourceVersion())},
			{"created_at", ts(md.GetCreatedAt())},
			{"updated_at", ts(md.GetUpdatedAt())},
		})
	}
}

func projectsText(ps []*mbv1.Project) func(io.Writer) {
	return func(w io.Writer) {
		rows := make([][]string, 0, len(ps))
		for _, p := range ps {
			md := p.GetMetadata()
			rows = append(rows, []string{md.GetId(), md.GetName(), p.GetStatus().GetRegion(),
				i64(p.GetStatus().GetSecretCount()), ts(md.GetCreatedAt())})
		}
		writeTable(w, []string{"ID", "NAME", "REGION", "SECRETS", "CREATED"}, rows)
	}
}

func secretText(s *mbv1.Secret) func(io.Writer) {
	return func(w io.Writer) {
		md, st := s.GetMetadata(), s.GetStatus()
		writeKV(w, []kv{
			{"id", md.GetId()},
			{"parent_id", md.GetParentId()},
			{"name", md.GetName()},
			{"state", st.GetState().String()},
			{"description", s.GetSpec().GetDescription()},
			{"primary_version_id", st.GetPrimaryVersionId()},
			{"primary_pinned", strconv.FormatBool(st.GetPrimaryPinned())},
			{"version_count", i64(st.GetVersionCount())},
			{"labels", labels(md.GetLabels())},
			{"resource_version", i64(md.GetResourceVersion())},
			{"created_at", ts(md.GetCreatedAt())},
			{"updated_at", ts(md.GetUpdatedAt())},
			{"deleted_at", ts(st.GetDeletedAt())},
			{"purge_at", ts(st.GetPurgeAt())},
		})
	}
}

func secretsText(ss []*mbv1.Secret) func(io.Writer) {
	return func(w io.Writer) {
		rows := make([][]string, 0, len(ss))
		for _, s := range ss {
			md, st := s.GetMetadata(), s.GetStatus()
			rows = append(rows, []string{md.GetId(), md.GetName(), st.GetState().String(),
				i64(st.GetVersionCount()), st.GetPrimaryVersionId(), ts(md.GetCreatedAt())})
		}
		writeTable(w, []string{"ID", "NAME", "STATE", "VERSIONS", "PRIMARY_VERSION", "CREATED"}, rows)
	}
}

func versionText(v *mbv1.SecretVersion) func(io.Writer) {
	return func(w io.Writer) {
		md, st := v.GetMetadata(), v.GetStatus()
		writeKV(w, []kv{
			{"id", md.GetId()},
			{"parent_id", md.GetParentId()},
			{"number", i64(st.GetNumber())},
			{"state", st.GetState().String()},
			{"description", v.GetSpec().GetDescription()},
			{"resource_version", i64(md.GetResourceVersion())},
			{"created_at", ts(md.GetCreatedAt())},
			{"deleted_at", ts(st.GetDeletedAt())},
			{"purge_at", ts(st.GetPurgeAt())},
		})
	}
}

func versionsText(vs []*mbv1.SecretVersion) func(io.Writer) {
	return func(w io.Writer) {
		rows := make([][]string, 0, len(vs))
		for _, v := range vs {
			md, st := v.GetMetadata(), v.GetStatus()
			rows = append(rows, []string{md.GetId(), i64(st.GetNumber()), st.GetState().String(),
				ts(md.GetCreatedAt()), v.GetSpec().GetDescription()})
		}
		writeTable(w, []string{"ID", "NUMBER", "STATE", "CREATED", "DESCRIPTION"}, rows)
	}
}

func clusterStatusText(s *mbv1.ClusterStatusResponse) func(io.Writer) {
	return func(w io.Writer) {
		writeKV(w, []kv{
			{"node_id", s.GetNodeId()},
			{"region", s.GetRegion()},
			{"raft_state", s.GetRaftState()},
			{"leader_id", s.GetLeaderId()},
			{"leader_grpc_address", s.GetLeaderGrpcAddress()},
			{"term", u64(s.GetTerm())},
			{"commit_index", u64(s.GetCommitIndex())},
			{"applied_index", u64(s.GetAppliedIndex())},
			{"last_log_index", u64(s.GetLastLogIndex())},
			{"voters", strconv.Itoa(int(s.GetVoters()))},
		})
	}
}

func membersText(ms []*mbv1.Member) func(io.Writer) {
	return func(w io.Writer) {
		rows := make([][]string, 0, len(ms))
		for _, m := range ms {
			rows = append(rows, []string{m.GetNodeId(), m.GetRegion(), m.GetRaftRole(), m.GetRaftAddress(),
				m.GetGrpcAddress(), m.GetHealth(), u64(m.GetAppliedIndex())})
		}
		writeTable(w, []string{"NODE_ID", "REGION", "ROLE", "RAFT_ADDRESS", "GRPC_ADDRESS", "HEALTH", "APPLIED_INDEX"}, rows)
	}
}

func accountText(acc *mbv1.Account) func(io.Writer) {
	return func(w io.Writer) {
		md := acc.GetMetadata()
		writeKV(w, []kv{
			{"id", md.GetId()},
			{"name", md.GetName()},
			{"type", accountType(acc.GetSpec().GetType())},
			{"description", acc.GetSpec().GetDescription()},
			{"region", acc.GetStatus().GetRegion()},
			{"labels", labels(md.GetLabels())},
			{"resource_version", i64(md.GetResourceVersion())},
			{"created_at", ts(md.GetCreatedAt())},
			{"updated_at", ts(md.GetUpdatedAt())},
		})
	}
}

func accountsText(as []*mbv1.Account) func(io.Writer) {
	return func(w io.Writer) {
		rows := make([][]string, 0, len(as))
		for _, acc := range as {
			md := acc.GetMetadata()
			rows = append(rows, []string{md.GetId(), md.GetName(), accountType(acc.GetSpec().GetType()),
				ts(md.GetCreatedAt()), acc.GetSpec().GetDescription()})
		}
		writeTable(w, []string{"ID", "NAME", "TYPE", "CREATED", "DESCRIPTION"}, rows)
	}
}

// accountType is the enum name, as in JSON (SERVICE, USER).
func accountType(t mbv1.AccountType) string {
	if t == mbv1.AccountType_ACCOUNT_TYPE_UNSPECIFIED {
		return ""
	}
	return t.String()
}

// tokenText shows a token's metadata. A Token message never holds the
// bearer string, which exists only in CreateTokenResponse.secret.
func tokenText(tok *mbv1.Token) func(io.Writer) {
	return func(w io.Writer) {
		md := tok.GetMetadata()
		writeKV(w, []kv{
			{"id", md.GetId()},
			{"account_id", md.GetParentId()},
			{"description", tok.GetSpec().GetDescription()},
			{"expires_at", expiry(tok.GetSpec().GetExpiresAt())},
			{"region", tok.GetStatus().GetRegion()},
			{"resource_version", i64(md.GetResourceVersion())},
			{"created_at", ts(md.GetCreatedAt())},
		})
	}
}

func tokensText(toks []*mbv1.Token) func(io.Writer) {
	return func(w io.Writer) {
		rows := make([][]string, 0, len(toks))
		for _, tok := range toks {
			md := tok.GetMetadata()
			rows = append(rows, []string{md.GetId(), md.GetParentId(), ts(md.GetCreatedAt()),
				expiry(tok.GetSpec().GetExpiresAt()), tok.GetSpec().GetDescription()})
		}
		writeTable(w, []string{"ID", "ACCOUNT_ID", "CREATED", "EXPIRES", "DESCRIPTION"}, rows)
	}
}

// expiry is a token's expiry time, "never" when it has none.
func expiry(t *timestamppb.Timestamp) string {
	if s := ts(t); s != "" {
		return s
	}
	return "never"
}

func bindingText(b *mbv1.AccessBinding) func(io.Writer) {
	return func(w io.Writer) {
		md, sp := b.GetMetadata(), b.GetSpec()
		writeKV(w, []kv{
			{"id", md.GetId()},
			{"resource_id", sp.GetResourceId()},
			{"account_id", sp.GetAccountId()},
			{"role", sp.GetRole()},
			{"resource_version", i64(md.GetResourceVersion())},
			{"created_at", ts(md.GetCreatedAt())},
		})
	}
}

func bindingsText(bs []*mbv1.AccessBinding) func(io.Writer) {
	return func(w io.Writer) {
		rows := make([][]string, 0, len(bs))
		for _, b := range bs {
			sp := b.GetSpec()
			rows = append(rows, []string{b.GetMetadata().GetId(), sp.GetResourceId(), sp.GetAccountId(), sp.GetRole(),
				ts(b.GetMetadata().GetCreatedAt())})
		}
		writeTable(w, []string{"ID", "RESOURCE_ID", "ACCOUNT_ID", "ROLE", "CREATED"}, rows)
	}
}

// payloadText prints one "key=value" line per entry. Values that would break
// the one-line-per-entry shape are Go-quoted; binary values are written as
// "key:base64=<base64>" (':' cannot occur in a key, so this is unambiguous).
func payloadText(entries []*mbv1.PayloadEntry) func(io.Writer) {
	return func(w io.Writer) {
		for _, e := range entries {
			switch v := e.GetValue().(type) {
			case *mbv1.PayloadEntry_BinaryValue:
				fmt.Fprintf(w, "%s:base64=%s\n", e.GetKey(), base64Std(v.BinaryValue))
			case *mbv1.PayloadEntry_StringValue:
				fmt.Fprintf(w, "%s=%s\n", e.GetKey(), quoteIfNeeded(v.StringValue))
			default:
				fmt.Fprintf(w, "%s=\n", e.GetKey())
			}
		}
	}
}

func quoteIfNeeded(s string) string {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return strconv.Quote(s)
		}
	}
	if strings.HasPrefix(s, `"`) {
		return strconv.Quote(s)
	}
	return s
}
