package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/gosd/gosd/diffusion"
)

func versionCommand(a *app, fs *flagSet) func(context.Context, []string) error {
	var lib string
	fs.stringVar(&lib, "lib", "path", "", "runtime library file or folder to report on\n(default: search SD_LIB, the executable's folder, lib/ beside it, build/, the system path)")
	return func(ctx context.Context, args []string) error {
		if len(args) > 0 {
			return usagef("unexpected argument %q", args[0])
		}
		fmt.Fprintf(a.stdout, "sdcli %s (%s %s/%s)\n", buildVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
		rt, err := diffusion.FindRuntime(lib)
		if err != nil {
			// A failure, for scripts that check an installation with sdcli version;
			// the reason goes to stderr with the other errors.
			fmt.Fprintln(a.stdout, "runtime library: none loads")
			return err
		}
		fmt.Fprintf(a.stdout, "runtime library: %s (ABI %d)\n", rt.Path, rt.ABIVersion)
		return nil
	}
}

// buildVersion is the main module's version, or its VCS revision for development builds.
func buildVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := info.Main.Version
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "+dirty"
			}
		}
	}
	if rev != "" && (v == "" || v == "(devel)") {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		return rev + modified
	}
	if v == "" {
		return "(devel)"
	}
	return v
}
