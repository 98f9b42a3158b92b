package server

import (
	"encoding/base64"
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// Limits of SPEC.md section 2. Every node checks them before anything is
// forwarded or proposed.
const (
	maxNameBytes        = 1024
	maxDescriptionBytes = 1024
	maxLabels           = 64
	maxLabelValueChars  = 63
	maxEntryKeyChars    = 256
	maxEntryValueBytes  = 65536
	maxEntries          = 100
	maxPayloadBytes     = 1 << 20
	defaultPageSize     = 100
	maxPageSize         = 1000
	maxIDBytes          = 256
)

var (
	labelKeyPattern = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)
	entryKeyPattern = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
)

// invalid returns an INVALID_ARGUMENT error naming field.
func invalid(field, format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, "%s: %s", field, fmt.Sprintf(format, args...))
}

func validateID(field, id string) error {
	if id == "" {
		return invalid(field, "is required")
	}
	if len(id) > maxIDBytes || strings.ContainsAny(id, "/\x00") || !utf8.ValidString(id) {
		return invalid(field, "is not a valid id")
	}
	return nil
}

func validateName(field, name string) error {
	if len(name) == 0 || len(name) > maxNameBytes {
		return invalid(field, "must be 1-%d bytes, got %d", maxNameBytes, len(name))
	}
	if !utf8.ValidString(name) {
		return invalid(field, "must be valid UTF-8")
	}
	if strings.Contains(name, "/") {
		return invalid(field, "must not contain '/'")
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return invalid(field, "must be printable (found %U)", r)
		}
	}
	return nil
}

func validateDescription(field, d string) error {
	if len(d) > maxDescriptionBytes {
		return invalid(field, "must be at most %d bytes, got %d", maxDescriptionBytes, len(d))
	}
	return nil
}

func validateLabels(field string, labels map[string]string) error {
	if len(labels) > maxLabels {
		return invalid(field, "at most %d labels, got %d", maxLabels, len(labels))
	}
	for k, v := range labels {
		if !labelKeyPattern.MatchString(k) {
			return invalid(field, "key %q must match [a-z][a-z0-9_-]{0,62}", k)
		}
		if utf8.RuneCountInString(v) > maxLabelValueChars {
			return invalid(field+"["+k+"]", "value must be at most %d characters", maxLabelValueChars)
		}
	}
	return nil
}

func validatePayload(field string, p *pb.Payload) error {
	entries := p.GetEntries()
	if len(entries) == 0 || len(entries) > maxEntries {
		return invalid(field+".entries", "must have 1-%d entries, got %d", maxEntries, len(entries))
	}
	seen := make(map[string]bool, len(entries))
	total := 0
	for i, e := range entries {
		f := fmt.Sprintf("%s.entries[%d]", field, i)
		k := e.GetKey()
		if len(k) == 0 || len(k) > maxEntryKeyChars || !entryKeyPattern.MatchString(k) {
			return invalid(f+".key", "%q must be 1-%d characters of [A-Za-z0-9_.-]", truncate(k, 64), maxEntryKeyChars)
		}
		if seen[k] {
			return invalid(f+".key", "%q appears more than once", k)
		}
		seen[k] = true
		var n int
		switch v := e.GetValue().(type) {
		case *pb.PayloadEntry_StringValue:
			n = len(v.StringValue)
			if !utf8.ValidString(v.StringValue) {
				return invalid(f+".string_value", "must be valid UTF-8 (use binary_value for bytes)")
			}
			if n == 0 || n > maxEntryValueBytes {
				return invalid(f+".string_value", "must be 1-%d bytes, got %d", maxEntryValueBytes, n)
			}
		case *pb.PayloadEntry_BinaryValue:
			n = len(v.BinaryValue)
			if n == 0 || n > maxEntryValueBytes {
				return invalid(f+".binary_value", "must be 1-%d bytes, got %d", maxEntryValueBytes, n)
			}
		default:
			return invalid(f, "needs a string_value or a binary_value")
		}
		total += len(k) + n
	}
	if total > maxPayloadBytes {
		return invalid(field, "must be at most %d bytes in all, got %d", maxPayloadBytes, total)
	}
	return nil
}

// truncate shortens s for an error message; never used on secret values.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// page holds a validated page request.
type page struct {
	size  int
	after string
	scope string
}

// A page token names the list it continues (scope: the collection and its
// parent, as "secrets/<project id>") and the last key that list returned,
// so that a token of another list, or a made-up one, is refused rather
// than silently read as a position in this one (and a page skipped). Its
// text starts with pageTokenTag, which is not base64url: a node of an
// older release, which read tokens as the bare base64url of the last key,
// refuses it instead of reading it as a position past the end.
const (
	pageScopeEnd = "\x00"
	pageTokenTag = "p1."
)

func parsePage(size int32, token, scope string) (page, error) {
	p := page{size: int(size), scope: scope}
	if size == 0 {
		p.size = defaultPageSize
	} else if size < 0 || size > maxPageSize {
		return p, invalid("page_size", "must be 1-%d, got %d", maxPageSize, size)
	}
	if token == "" {
		return p, nil
	}
	bad := invalid("page_token", "is not a token from a previous page of this list")
	if rest, ok := strings.CutPrefix(token, pageTokenTag); ok {
		raw, err := base64.RawURLEncoding.DecodeString(rest)
		s, after, found := strings.Cut(string(raw), pageScopeEnd)
		if err != nil || !found || s != scope || len(after) == 0 || len(after) > maxIDBytes {
			return p, bad
		}
		p.after = after
		return p, nil
	}
	// A token of an older release (during and just after an upgrade): the
	// bare last key, accepted when it has the shape of this list's keys.
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || !legacyPosition(scope, string(raw)) {
		return p, bad
	}
	p.after = string(raw)
	return p, nil
}

// legacyPosition reports whether key has the shape of the keys of the list
// scope names, as tokens of older releases carried them.
func legacyPosition(scope, key string) bool {
	if len(key) == 0 || len(key) > maxIDBytes {
		return false
	}
	kind, _, _ := strings.Cut(scope, "/")
	switch kind {
	case "versions", "audit":
		return len(key) == 8 // a big-endian sequence number
	case "secrets":
		return strings.HasPrefix(key, prefixSecret)
	case "projects":
		return strings.HasPrefix(key, prefixProject)
	case "accounts":
		return strings.HasPrefix(key, prefixAccountService) || strings.HasPrefix(key, prefixAccountUser)
	case "tokens":
		return strings.HasPrefix(key, prefixToken)
	case "bindings":
		return strings.HasPrefix(key, prefixBinding)
	}
	return false
}

// next is the token of the page after the one ending at lastID.
func (p page) next(lastID string) string {
	return pageTokenTag + base64.RawURLEncoding.EncodeToString([]byte(p.scope+pageScopeEnd+lastID))
}

// ---------------------------------------------------------------- requests

func validateCreateProject(req *pb.CreateProjectRequest) error {
	p := req.GetProject()
	if err := validateName("project.metadata.name", p.GetMetadata().GetName()); err != nil {
		return err
	}
	if err := validateLabels("project.metadata.labels", p.GetMetadata().GetLabels()); err != nil {
		return err
	}
	return validateDescription("project.spec.description", p.GetSpec().GetDescription())
}

func validateCreateSecret(req *pb.CreateSecretRequest) error {
	s := req.GetSecret()
	if err := validateID("secret.metadata.parent_id", s.GetMetadata().GetParentId()); err != nil {
		return err
	}
	if err := validateName("secret.metadata.name", s.GetMetadata().GetName()); err != nil {
		return err
	}
	if err := validateLabels("secret.metadata.labels", s.GetMetadata().GetLabels()); err != nil {
		return err
	}
	if err := validateDescription("secret.spec.description", s.GetSpec().GetDescription()); err != nil {
		return err
	}
	if s.GetSpec().GetPrimaryVersionId() != "" {
		return invalid("secret.spec.primary_version_id", "cannot be set on create (use secret_version.set_primary)")
	}
	if v := s.GetSpec().GetSecretVersion(); v != nil {
		if err := validateDescription("secret.spec.secret_version.description", v.GetDescription()); err != nil {
			return err
		}
		if err := validatePayload("secret.spec.secret_version.payload", v.GetPayload()); err != nil {
			return err
		}
	}
	return nil
}

// updatePaths are the fields UpdateSecret may change.
var updatePaths = map[string]bool{"metadata.name": true, "metadata.labels": true, "spec.description": true, "spec.primary_version_id": true}

// validateUpdateSecret checks the request and returns the paths to apply.
func validateUpdateSecret(req *pb.UpdateSecretRequest) ([]string, error) {
	s := req.GetSecret()
	if err := validateID("secret.metadata.id", s.GetMetadata().GetId()); err != nil {
		return nil, err
	}
	var paths []string
	if m := req.GetUpdateMask(); m != nil && len(m.GetPaths()) > 0 {
		seen := map[string]bool{}
		for _, p := range m.GetPaths() {
			if !updatePaths[p] {
				return nil, invalid("update_mask", "path %q cannot be updated (allowed: metadata.name, metadata.labels, spec.description, spec.primary_version_id)", p)
			}
			if !seen[p] {
				seen[p] = true
				paths = append(paths, p)
			}
		}
	} else {
		if s.GetMetadata().GetName() != "" {
			paths = append(paths, "metadata.name")
		}
		if len(s.GetMetadata().GetLabels()) > 0 {
			paths = append(paths, "metadata.labels")
		}
		if s.GetSpec().GetDescription() != "" {
			paths = append(paths, "spec.description")
		}
		if s.GetSpec().GetPrimaryVersionId() != "" {
			paths = append(paths, "spec.primary_version_id")
		}
		if len(paths) == 0 {
			return nil, invalid("update_mask", "nothing to update")
		}
	}
	for _, p := range paths {
		var err error
		switch p {
		case "metadata.name":
			err = validateName("secret.metadata.name", s.GetMetadata().GetName())
		case "metadata.labels":
			err = validateLabels("secret.metadata.labels", s.GetMetadata().GetLabels())
		case "spec.description":
			err = validateDescription("secret.spec.description", s.GetSpec().GetDescription())
		case "spec.primary_version_id":
			if id := s.GetSpec().GetPrimaryVersionId(); id != "" {
				err = validateID("secret.spec.primary_version_id", id)
			}
		}
		if err != nil {
			return nil, err
		}
	}
	return paths, nil
}

func validateCreateVersion(req *pb.CreateSecretVersionRequest) error {
	v := req.GetVersion()
	if err := validateID("version.metadata.parent_id", v.GetMetadata().GetParentId()); err != nil {
		return err
	}
	if err := validateLabels("version.metadata.labels", v.GetMetadata().GetLabels()); err != nil {
		return err
	}
	if err := validateDescription("version.spec.description", v.GetSpec().GetDescription()); err != nil {
		return err
	}
	return validatePayload("version.spec.payload", v.GetSpec().GetPayload())
}
