// Package api holds loom's wire types: the protobuf messages and gRPC
// services through which workers and the CLI talk to the coordinator, the
// encoding of the coordinator's replicated log, the error reasons carried in
// gRPC status details, and a client dialer that spreads calls over every
// known coordinator address.
//
// It imports nothing of loom. The coordinator and the worker meet here.
package api
