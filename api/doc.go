// Package api holds loom's wire types: the protobuf messages and gRPC
// services through which workers and the CLI talk to the coordinator, the
// encoding of the coordinator's replicated log, the error reasons carried in
// gRPC status details, and a client dialer that spreads calls over every
// known coordinator address.
//
// It imports nothing of loom. The coordinator and the worker meet here.
package api

// Regenerate the *.pb.go files with `go generate ./api` (needs protoc,
// protoc-gen-go v1.36.12 and protoc-gen-go-grpc v1.6.2 on PATH; see gen.sh).
//go:generate ./gen.sh
