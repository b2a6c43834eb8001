#!/usr/bin/env bash
# Regenerates the committed *.pb.go files from the .proto files in this folder.
# Tools: apt-get install -y protobuf-compiler
#        go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
#        go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
set -euo pipefail
cd "$(dirname "$0")"
PATH="$(go env GOPATH)/bin:$PATH"
protoc -I . \
  --go_out=. --go_opt=paths=source_relative \
  --go-grpc_out=. --go-grpc_opt=paths=source_relative \
  loom.proto raftlog.proto
