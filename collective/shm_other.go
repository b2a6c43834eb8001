//go:build !linux

package collective

import (
	"errors"
	"net"
	"sync/atomic"
	"time"
)

var errNoShm = errors.New("shared memory links need Linux")

func createShm(int) (*shmRegion, string, error)       { return nil, "", errNoShm }
func openShm(string, []byte, int) (*shmRegion, error) { return nil, errNoShm }
func removeShm(string)                                {}
func (r *shmRegion) unmap()                           { r.mem = nil }

func futexWait(*atomic.Uint32, uint32, time.Duration) {}
func futexWake(*atomic.Uint32)                        {}
func peerGone(*net.TCPConn) bool                      { return false }
