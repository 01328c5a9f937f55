package binding

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/ebitengine/purego"
)

// Preference chooses between the CPU and GPU builds of the library.
type Preference int

const (
	// PreferAuto loads libsd-cuda when it is found and a usable GPU is present, else libsd.
	PreferAuto Preference = iota
	// PreferCPU loads libsd only.
	PreferCPU
	// PreferCUDA loads libsd-cuda only and fails when no usable GPU is present.
	PreferCUDA
)

// LoadOptions tells Load where to look.
type LoadOptions struct {
	// Path is a library file, or a directory holding libsd / libsd-cuda. Empty: search
	// SD_LIB, the executable's folder, lib/ beside it, a build/ tree and the system path.
	Path string
	// Backend chooses the library build; the zero value is PreferAuto.
	Backend Preference
}

// EnvLibrary names the environment variable consulted when LoadOptions.Path is empty.
const EnvLibrary = "SD_LIB"

func libFile(cuda bool) string {
	base := "libsd"
	if cuda {
		base = "libsd-cuda"
	}
	if runtime.GOOS == "darwin" {
		return base + ".dylib"
	}
	return base + ".so"
}

func (p Preference) files() []string {
	switch p {
	case PreferCPU:
		return []string{libFile(false)}
	case PreferCUDA:
		return []string{libFile(true)}
	}
	return []string{libFile(true), libFile(false)}
}

// executable is os.Executable; tests substitute a fake program's path.
var executable = os.Executable

// searchDirs lists the directories searched when no explicit path is given, in order and
// without repeats: the executable's own folder (build/sdcli beside build/libsd.so),
// lib/ beside it and ../lib (an unpacked release), then build/ in the working directory
// and each of its parents.
func searchDirs() []string {
	var dirs []string
	add := func(d string) {
		if d = filepath.Clean(d); !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	if exe, err := executable(); err == nil {
		if exe, err = filepath.EvalSymlinks(exe); err == nil {
			d := filepath.Dir(exe)
			add(d)
			add(filepath.Join(d, "lib"))
			add(filepath.Join(d, "..", "lib"))
		}
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			add(filepath.Join(d, "build"))
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return dirs
}

type candidate struct {
	path string
	cuda bool
	// required: an explicit file, whose failure to load is final.
	required bool
	// missing: a file looked for in a directory and absent; it is not opened, only
	// reported among the places tried.
	missing bool
	// system: a bare name left to the dynamic linker's search path.
	system bool
}

func candidates(opts LoadOptions) []candidate {
	explicit := opts.Path
	if explicit == "" {
		explicit = os.Getenv(EnvLibrary)
	}
	var out []candidate
	addDir := func(dir string) {
		for _, f := range opts.Backend.files() {
			p := filepath.Join(dir, f)
			_, err := os.Stat(p)
			out = append(out, candidate{path: p, cuda: strings.Contains(f, "-cuda"), missing: err != nil})
		}
	}
	if explicit != "" {
		if st, err := os.Stat(explicit); err == nil && st.IsDir() {
			addDir(explicit)
			return out
		}
		return []candidate{{path: explicit, cuda: strings.Contains(filepath.Base(explicit), "-cuda"), required: true}}
	}
	for _, d := range searchDirs() {
		addDir(d)
	}
	// Last, the system's own search path (LD_LIBRARY_PATH, ld.so.cache).
	for _, f := range opts.Backend.files() {
		out = append(out, candidate{path: f, cuda: strings.Contains(f, "-cuda"), system: true})
	}
	return out
}

// Load finds, opens and checks the runtime library (see the package documentation for
// the search order).
func Load(opts LoadOptions) (*Library, error) {
	var tried []string
	var fallback []string
	for _, c := range candidates(opts) {
		if c.missing {
			tried = append(tried, c.path)
			continue
		}
		h, err := purego.Dlopen(c.path, purego.RTLD_NOW|purego.RTLD_LOCAL)
		if err != nil {
			why := strings.TrimPrefix(err.Error(), c.path+": ") // dlerror names the file already
			switch {
			case c.required:
				return nil, fmt.Errorf("%w: %s: %s", ErrLibraryNotFound, c.path, why)
			case c.system:
				tried = append(tried, c.path+" (system path)")
			default:
				// The file is there but does not load: say why, or the list reads
				// as if it were absent.
				tried = append(tried, fmt.Sprintf("%s (%s)", c.path, why))
			}
			if c.cuda && filepath.IsAbs(c.path) {
				fallback = append(fallback, fmt.Sprintf("%s did not load: %v", c.path, err))
			}
			continue
		}
		lib := &Library{path: c.path, handle: h}
		if err := lib.resolve(); err != nil {
			purego.Dlclose(h)
			return nil, err
		}
		if c.cuda && opts.Backend != PreferCPU {
			if ok, why := lib.BackendAvailable(BackendCUDA); !ok {
				purego.Dlclose(h)
				if opts.Backend == PreferCUDA || c.required {
					return nil, fmt.Errorf("%w: %s: no usable GPU: %s", ErrDevice, c.path, why)
				}
				fallback = append(fallback, fmt.Sprintf("%s: no usable GPU: %s", c.path, why))
				continue
			}
		}
		lib.fallback = strings.Join(fallback, "; ")
		return lib, nil
	}
	return nil, fmt.Errorf("%w (tried %s); build it with `make` or set %s to its path",
		ErrLibraryNotFound, strings.Join(tried, ", "), EnvLibrary)
}

// resolve binds every function, checking the ABI version and struct layouts first.
func (l *Library) resolve() error {
	bind := func(syms []symbol) error {
		for _, s := range syms {
			addr, err := purego.Dlsym(l.handle, s.name)
			if err != nil || addr == 0 {
				return fmt.Errorf("%w: %s: %s", ErrMissingSymbol, l.path, s.name)
			}
			purego.RegisterFunc(s.fn, addr)
		}
		return nil
	}
	if err := bind(l.abiSymbols()[:1]); err != nil {
		return err
	}
	if v := l.sdAbiVersion(); v != ABIVersion {
		return fmt.Errorf("%w: %s has ABI version %d, this binding needs %d", ErrABIMismatch, l.path, v, ABIVersion)
	}
	if err := bind(l.abiSymbols()[1:]); err != nil {
		return err
	}
	if err := l.checkLayouts(); err != nil {
		return err
	}
	return bind(l.apiSymbols())
}

// Close unloads the library. Every context must have been freed.
func (l *Library) Close() error {
	if l.handle == 0 {
		return nil
	}
	err := purego.Dlclose(l.handle)
	l.handle = 0
	return err
}

var defaultLib struct {
	once sync.Once
	lib  *Library
	err  error
}

// Default loads the library once per process with the default options (honouring
// SD_LIB) and returns it on every later call.
func Default() (*Library, error) {
	defaultLib.once.Do(func() {
		defaultLib.lib, defaultLib.err = Load(LoadOptions{})
	})
	return defaultLib.lib, defaultLib.err
}

// IsLoadError reports whether err comes from finding or checking the library (as opposed
// to a failed call into it).
func IsLoadError(err error) bool {
	return errors.Is(err, ErrLibraryNotFound) || errors.Is(err, ErrABIMismatch) || errors.Is(err, ErrMissingSymbol)
}
