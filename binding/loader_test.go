package binding

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeExecutable makes the loader believe the program is dir/sdcli, and moves the working
// directory to an empty folder, so that no build/ tree of this checkout is found.
func fakeExecutable(t *testing.T, dir string) {
	t.Helper()
	exe := filepath.Join(dir, "sdcli")
	require.NoError(t, os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755))
	saved := executable
	executable = func() (string, error) { return exe, nil }
	t.Cleanup(func() { executable = saved })
	t.Chdir(t.TempDir())
	t.Setenv(EnvLibrary, "")
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	require.NoError(t, err)
	defer src.Close()
	require.NoError(t, os.MkdirAll(filepath.Dir(to), 0o755))
	dst, err := os.Create(to)
	require.NoError(t, err)
	_, err = io.Copy(dst, src)
	require.NoError(t, err)
	require.NoError(t, dst.Close())
}

// build/sdcli run from anywhere finds build/libsd.so beside it; lib/ beside the program
// is still searched.
func TestLoadBesideExecutable(t *testing.T) {
	built := filepath.Join(buildDir(t), libFile(false))
	if _, err := os.Stat(built); err != nil {
		t.Skipf("native library not built (%s): run `make` first", built)
	}
	tests := []struct {
		name string
		at   string // where the library lies, relative to the executable's folder
	}{
		{"the executable's folder", libFile(false)},
		{"lib/ beside it", filepath.Join("lib", libFile(false))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			want := filepath.Join(dir, tt.at)
			copyFile(t, built, want)
			fakeExecutable(t, dir)
			lib, err := Load(LoadOptions{Backend: PreferCPU})
			require.NoError(t, err)
			defer lib.Close()
			assert.Equal(t, want, lib.Path())
		})
	}
}

// When nothing loads, the error lists every place looked at, not an empty "(tried )".
func TestLoadNotFoundListsTried(t *testing.T) {
	tests := []struct {
		name string
		opts func(exeDir, emptyDir string) LoadOptions
		want func(exeDir, emptyDir string) []string
	}{
		{"an empty folder given",
			func(_, empty string) LoadOptions { return LoadOptions{Path: empty} },
			func(_, empty string) []string {
				return []string{filepath.Join(empty, libFile(true)), filepath.Join(empty, libFile(false))}
			}},
		{"an empty folder given, CPU only",
			func(_, empty string) LoadOptions { return LoadOptions{Path: empty, Backend: PreferCPU} },
			func(_, empty string) []string { return []string{filepath.Join(empty, libFile(false))} }},
		{"the default search",
			func(string, string) LoadOptions { return LoadOptions{Backend: PreferCPU} },
			func(exe, _ string) []string {
				wd, _ := os.Getwd()
				return []string{
					filepath.Join(exe, libFile(false)),
					filepath.Join(exe, "lib", libFile(false)),
					filepath.Join(filepath.Dir(exe), "lib", libFile(false)),
					filepath.Join(wd, "build", libFile(false)),
					libFile(false) + " (system path)",
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exeDir, empty := t.TempDir(), t.TempDir()
			fakeExecutable(t, exeDir)
			exeDir, err := filepath.EvalSymlinks(exeDir) // as the loader resolves the program
			require.NoError(t, err)
			lib, err := Load(tt.opts(exeDir, empty))
			if err == nil {
				lib.Close()
				t.Skipf("a runtime library is installed on the system path (%s)", lib.Path())
			}
			require.ErrorIs(t, err, ErrLibraryNotFound)
			assert.NotContains(t, err.Error(), "(tried )")
			for _, p := range tt.want(exeDir, empty) {
				assert.Contains(t, err.Error(), p)
			}
		})
	}
}

// A file that is there but is no library is listed with the reason it did not load.
func TestLoadTriedSaysWhy(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, libFile(false))
	require.NoError(t, os.WriteFile(bad, []byte("not an ELF file"), 0o644))
	_, err := Load(LoadOptions{Path: dir, Backend: PreferCPU})
	require.ErrorIs(t, err, ErrLibraryNotFound)
	assert.Regexp(t, `\(tried `+regexp.QuoteMeta(bad)+` \(.+\)\)`, err.Error())
}

// An explicit file that does not load is named once, not again by dlerror's own text.
func TestLoadExplicitNamedOnce(t *testing.T) {
	tests := []struct {
		name, content string
	}{
		{"missing", ""},
		{"not a library", "not an ELF file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), libFile(false))
			if tt.content != "" {
				require.NoError(t, os.WriteFile(path, []byte(tt.content), 0o644))
			}
			_, err := Load(LoadOptions{Path: path})
			require.ErrorIs(t, err, ErrLibraryNotFound)
			assert.Equal(t, 1, strings.Count(err.Error(), path), err.Error())
		})
	}
}
