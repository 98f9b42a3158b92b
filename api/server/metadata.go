package server

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

const maxIdempotencyKeyLen = 128

// idempotencyKey returns the call's x-idempotency-key, if any.
func idempotencyKey(ctx context.Context) (string, error) {
	vals := metadata.ValueFromIncomingContext(ctx, mdIdempotency)
	if len(vals) == 0 {
		return "", nil
	}
	if len(vals) > 1 {
		return "", status.Error(codes.InvalidArgument, "x-idempotency-key: given more than once")
	}
	k := vals[0]
	if k == "" || len(k) > maxIdempotencyKeyLen {
		return "", status.Errorf(codes.InvalidArgument, "x-idempotency-key: must be 1-%d characters", maxIdempotencyKeyLen)
	}
	for _, c := range []byte(k) {
		if c < 0x21 || c > 0x7e {
			return "", status.Error(codes.InvalidArgument, "x-idempotency-key: must be printable ASCII without spaces")
		}
	}
	return k, nil
}

// requestBytes is what identifies a request for idempotency: the method
// and the request's deterministic encoding.
func requestBytes(ctx context.Context, req proto.Message) []byte {
	method, _ := grpc.Method(ctx)
	raw, _ := proto.MarshalOptions{Deterministic: true}.Marshal(req)
	return append(append([]byte(method), 0), raw...)
}

type linearizableKey struct{}

// forceLinearizable makes a read ignore x-consistency: stale.
func forceLinearizable(ctx context.Context) context.Context {
	return context.WithValue(ctx, linearizableKey{}, true)
}

// isStale reports whether the call asked for x-consistency: stale.
func isStale(ctx context.Context) bool {
	if ctx.Value(linearizableKey{}) != nil {
		return false
	}
	for _, v := range metadata.ValueFromIncomingContext(ctx, mdConsistency) {
		if v == "stale" {
			return true
		}
	}
	return false
}
