package server

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mysterybox/mysterybox/cluster"
	"github.com/mysterybox/mysterybox/fsm"
	"github.com/mysterybox/mysterybox/region"
	"github.com/mysterybox/mysterybox/store"
)

// errorCodes is the one table from domain errors to gRPC codes.
var errorCodes = []struct {
	err  error
	code codes.Code
}{
	{store.ErrNotFound, codes.NotFound},
	{fsm.ErrAlreadyExists, codes.AlreadyExists},
	{fsm.ErrConflict, codes.Aborted},
	{fsm.ErrFailedPrecondition, codes.FailedPrecondition},
	{fsm.ErrInvalidArgument, codes.InvalidArgument},
	{errInvalid, codes.InvalidArgument},
	{cluster.ErrNotLeader, codes.Unavailable},
	{cluster.ErrUnknownOutcome, codes.Unavailable},
	{cluster.ErrTimeout, codes.Unavailable},
	{region.ErrTampered, codes.DataLoss},
	{region.ErrUnknownKey, codes.Internal},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
}

// errInvalid marks request validation failures.
var errInvalid = errors.New("invalid argument")

// toStatus converts an error to a gRPC status error, keeping its message.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, e := range errorCodes {
		if errors.Is(err, e.err) {
			return status.Error(e.code, err.Error())
		}
	}
	return status.Error(codes.Internal, err.Error())
}
