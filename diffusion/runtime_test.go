package diffusion

import (
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// FindRuntime reports the library Open would load, so that sdcli version needs no
// binding of its own.
func TestFindRuntime(t *testing.T) {
	_, err := FindRuntime(filepath.Join(t.TempDir(), "no-library"))
	assert.ErrorIs(t, err, ErrLibraryNotFound)

	testLibrary(t).Close()
	build := filepath.Join(testutil.RepoRoot(t), "build")
	rt, err := FindRuntime(build)
	require.NoError(t, err)
	assert.Equal(t, build, filepath.Dir(rt.Path), "a library of the folder asked for")
	assert.Contains(t, filepath.Base(rt.Path), "libsd")
	assert.Equal(t, uint32(binding.ABIVersion), rt.ABIVersion)
}
