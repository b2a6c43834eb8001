package api

// Regenerate with `go generate ./api` (needs protoc, protoc-gen-go v1.36.12
// and protoc-gen-go-grpc v1.6.2 on PATH; see gen.sh).
//go:generate ./gen.sh
