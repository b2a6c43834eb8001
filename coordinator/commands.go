package coordinator

import (
	"fmt"
	"strings"
	"unicode"

	"google.golang.org/protobuf/proto"

	"github.com/loomtrain/loom/api"
)

// CmdType numbers the Raft log commands. The numbering is append-only: a
// number, once released, keeps its meaning forever; retired commands keep
// their slot.
type CmdType uint8

const (
	CmdInitCluster       CmdType = 1
	CmdPutCoordinator    CmdType = 2
	CmdRemoveCoordinator CmdType = 3
	CmdSubmitJob         CmdType = 4
	CmdCancelJob         CmdType = 5
	CmdRegisterWorker    CmdType = 6
	// CmdHeartbeat is retired (leases live in the leader's memory, see
	// lease.go); it is still applied from logs written before.
	CmdHeartbeat        CmdType = 7
	CmdRemoveWorker     CmdType = 8
	CmdPutPlan          CmdType = 9
	CmdReportProgress   CmdType = 10
	CmdCommitCheckpoint CmdType = 11
	CmdDrainWorker      CmdType = 12
	CmdLeaderElected    CmdType = 13
	// CmdReportProgressBatch carries one progress interval's step reports
	// (progress.go).
	CmdReportProgressBatch CmdType = 14
)

// cmdVersion is the payload encoding version written after the type byte.
// Payloads are protobuf (api/raftlog.proto), whose fields are only added, so
// version 1 readers and writers stay compatible; a reader refuses versions
// newer than it knows.
const cmdVersion = 1

// cmdTypes maps each command type to its payload constructor. It is the one
// table that must grow when a command is added (with a case in fsm.Apply).
var cmdTypes = map[CmdType]func() proto.Message{
	CmdInitCluster:         func() proto.Message { return &api.CmdInitCluster{} },
	CmdPutCoordinator:      func() proto.Message { return &api.CmdPutCoordinator{} },
	CmdRemoveCoordinator:   func() proto.Message { return &api.CmdRemoveCoordinator{} },
	CmdSubmitJob:           func() proto.Message { return &api.CmdSubmitJob{} },
	CmdCancelJob:           func() proto.Message { return &api.CmdCancelJob{} },
	CmdRegisterWorker:      func() proto.Message { return &api.CmdRegisterWorker{} },
	CmdHeartbeat:           func() proto.Message { return &api.CmdHeartbeat{} },
	CmdRemoveWorker:        func() proto.Message { return &api.CmdRemoveWorker{} },
	CmdPutPlan:             func() proto.Message { return &api.CmdPutPlan{} },
	CmdReportProgress:      func() proto.Message { return &api.CmdReportProgress{} },
	CmdCommitCheckpoint:    func() proto.Message { return &api.CmdCommitCheckpoint{} },
	CmdDrainWorker:         func() proto.Message { return &api.CmdDrainWorker{} },
	CmdLeaderElected:       func() proto.Message { return &api.CmdLeaderElected{} },
	CmdReportProgressBatch: func() proto.Message { return &api.CmdReportProgressBatch{} },
}

// typeOf returns the command type of a payload message.
func typeOf(m proto.Message) (CmdType, error) {
	switch m.(type) {
	case *api.CmdInitCluster:
		return CmdInitCluster, nil
	case *api.CmdPutCoordinator:
		return CmdPutCoordinator, nil
	case *api.CmdRemoveCoordinator:
		return CmdRemoveCoordinator, nil
	case *api.CmdSubmitJob:
		return CmdSubmitJob, nil
	case *api.CmdCancelJob:
		return CmdCancelJob, nil
	case *api.CmdRegisterWorker:
		return CmdRegisterWorker, nil
	case *api.CmdHeartbeat:
		return CmdHeartbeat, nil
	case *api.CmdRemoveWorker:
		return CmdRemoveWorker, nil
	case *api.CmdPutPlan:
		return CmdPutPlan, nil
	case *api.CmdReportProgress:
		return CmdReportProgress, nil
	case *api.CmdCommitCheckpoint:
		return CmdCommitCheckpoint, nil
	case *api.CmdDrainWorker:
		return CmdDrainWorker, nil
	case *api.CmdLeaderElected:
		return CmdLeaderElected, nil
	case *api.CmdReportProgressBatch:
		return CmdReportProgressBatch, nil
	}
	return 0, fmt.Errorf("%w: payload %T", ErrUnknownCommand, m)
}

func (t CmdType) String() string {
	if f, ok := cmdTypes[t]; ok {
		return string(f().ProtoReflect().Descriptor().Name())
	}
	return fmt.Sprintf("CmdType(%d)", uint8(t))
}

// Label is the command's name as a metric label: "register_worker",
// "report_progress_batch"; "unknown" for a number no command has.
func (t CmdType) Label() string {
	if _, ok := cmdTypes[t]; !ok {
		return "unknown"
	}
	name := strings.TrimPrefix(t.String(), "Cmd")
	var b strings.Builder
	for i, r := range name {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// EncodeCommand returns the log entry bytes of a command payload:
// type byte, version byte, deterministic protobuf.
func EncodeCommand(m proto.Message) ([]byte, error) {
	t, err := typeOf(m)
	if err != nil {
		return nil, err
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", t, err)
	}
	return append([]byte{byte(t), cmdVersion}, b...), nil
}

// DecodeCommand parses log entry bytes written by EncodeCommand.
func DecodeCommand(b []byte) (CmdType, proto.Message, error) {
	if len(b) < 2 {
		return 0, nil, fmt.Errorf("%w: entry of %d bytes", ErrUnknownCommand, len(b))
	}
	t := CmdType(b[0])
	newMsg, ok := cmdTypes[t]
	if !ok {
		return t, nil, fmt.Errorf("%w: %d", ErrUnknownCommand, b[0])
	}
	if b[1] == 0 || b[1] > cmdVersion {
		return t, nil, fmt.Errorf("%w: %s version %d, this build reads up to %d", ErrUnknownCommand, t, b[1], cmdVersion)
	}
	m := newMsg()
	if err := proto.Unmarshal(b[2:], m); err != nil {
		return t, nil, fmt.Errorf("decode %s: %w", t, err)
	}
	return t, m, nil
}
