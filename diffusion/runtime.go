package diffusion

import "github.com/gosd/gosd/binding"

// Runtime describes a native runtime library that loads.
type Runtime struct {
	Path       string // the file loaded, or the name the system's search resolved
	ABIVersion uint32 // the C API version it implements (sd_abi_version)
}

// FindRuntime loads the runtime library the way Open does, library being what
// WithLibrary takes (a file, or a folder holding it; "" searches SD_LIB, the executable's
// folder, lib/ beside it, build/ and the system path), says which one it is and unloads
// it. Its error is ErrLibraryNotFound when none loads, naming the places tried.
func FindRuntime(library string) (Runtime, error) {
	lib, err := binding.Load(binding.LoadOptions{Path: library})
	if err != nil {
		return Runtime{}, err
	}
	r := Runtime{Path: lib.Path(), ABIVersion: lib.ABIVersion()}
	return r, lib.Close()
}
