package main

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// -o is checked before anything is generated: a folder that is missing, is a file, or
// cannot be written in, and an image path that is a folder, fail at once.
func TestGenerateChecksOutputFirst(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "taken.png"), 0o755))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "batch-2.png"), 0o755))
	readOnly := filepath.Join(dir, "read-only")
	require.NoError(t, os.Mkdir(readOnly, 0o555))
	model := t.TempDir() // exists; never opened

	tests := []struct {
		name   string
		output string
		extra  []string
		msg    string
	}{
		{"folder missing", filepath.Join(dir, "no", "out.png"), nil, "the folder " + filepath.Join(dir, "no") + " does not exist"},
		{"folder is a file", filepath.Join(file, "out.png"), nil, file + " is not a folder"},
		{"output is a folder", filepath.Join(dir, "taken.png"), nil, filepath.Join(dir, "taken.png") + " is a folder, not a file"},
		{"a batch image is a folder", filepath.Join(dir, "batch.png"), []string{"--batch", "2"}, filepath.Join(dir, "batch-2.png") + " is a folder, not a file"},
		{"folder not writable", filepath.Join(readOnly, "out.png"), nil, "cannot write in the folder " + readOnly + ": permission denied"},
		// sysfs refuses new files to root too, where the permissions above do not count.
		{"sysfs", "/sys/out.png", nil, "cannot write in the folder /sys: permission denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Dir(tt.output)
			if tt.name == "sysfs" && runtime.GOOS != "linux" {
				t.Skip("sysfs is Linux's")
			}
			if strings.HasPrefix(tt.msg, "cannot write") {
				if f, err := os.CreateTemp(dir, "probe"); err == nil {
					f.Close()
					os.Remove(f.Name())
					t.Skipf("this user may write in %s (root?)", dir)
				}
			}
			r := runArgs(t, append([]string{"txt2img", "-m", model, "-o", tt.output}, tt.extra...)...)
			assert.Equal(t, exitError, r.code, "stderr: %s", r.stderr)
			assert.Contains(t, r.stderr, "sdcli txt2img: -o "+tt.output+": "+tt.msg)
			assert.NotContains(t, r.stderr, "loading ")
			assert.Empty(t, r.stdout)
		})
	}

	// A writable folder is left as it was: the check's probe file is removed.
	ok := t.TempDir()
	require.NoError(t, checkOutput(filepath.Join(ok, "out.png"), 3))
	entries, err := os.ReadDir(ok)
	require.NoError(t, err)
	assert.Empty(t, entries)
}
