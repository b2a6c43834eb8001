package netlab

// One host of a lab: running a program on it, and cutting and restoring
// its link.

import (
	"context"
	"os/exec"
	"syscall"
)

// Host is one network namespace of a lab. Its fields are fixed by New.
type Host struct {
	Name string // as given to New
	NS   string // the network namespace (ip netns exec NS ...)
	IP   string // its address on the lab's bridge
	lab  *Lab
	port string // its link's end on the switch
}

// Command returns a command that runs name with args on h, through
// `ip netns exec`, which execs the program itself: the process started is
// the program, in h's namespace, and sees the same files as the caller. It
// gets its own process group and SIGKILL when the caller dies (Pdeathsig),
// and Lab.Close kills it if it still runs. ctx kills it as
// exec.CommandContext does.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Cut sets h's switch port down: from then on nothing reaches h or leaves
// it, as when its cable is pulled. Connections stay open on both sides and
// their packets are lost; h's eth0 shows NO-CARRIER. Cutting a cut link does
// nothing.
func (h *Host) Cut() error { return h.setPort("down") }

// Restore sets h's switch port up again after Cut.
func (h *Host) Restore() error { return h.setPort("up") }

func (h *Host) setPort(state string) error {
	_, err := ipCmd(context.Background(), "-n", h.lab.prefix, "link", "set", h.port, state)
	return err
}
