package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// buildCommit is set by the Makefile (-ldflags -X) for builds without Go's
// VCS stamp.
var buildCommit string

// versionString names the build: the module version (a tag, or "(devel)"
// for a build from a checkout), the commit and its time as Go's VCS stamp
// recorded them (with "+dirty" for uncommitted changes), and the Go release
// and platform.
func versionString() string {
	v, rev, at, dirty := "(devel)", buildCommit, "", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value[:min(12, len(s.Value))]
			case "vcs.time":
				at = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	out := "loom " + v
	if rev != "" {
		if dirty {
			rev += "+dirty"
		}
		out += " commit " + rev
		if at != "" {
			out += " (" + at + ")"
		}
	}
	return fmt.Sprintf("%s %s %s/%s", out, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print loom's version, commit and Go release",
		Long:  "Print the version, the commit it was built from, and the Go release and platform (also: loom --version).",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), versionString())
		},
	}
}
