package binding

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"unsafe"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// buildDir is the CMake build tree of this checkout; tests needing the native library
// skip when it has not been built.
func buildDir(t *testing.T) string {
	t.Helper()
	return filepath.Join(testutil.RepoRoot(t), "build")
}

func loadCPU(t *testing.T) *Library {
	t.Helper()
	path := filepath.Join(buildDir(t), libFile(false))
	if _, err := os.Stat(path); err != nil {
		t.Skipf("native library not built (%s): run `make` first", path)
	}
	lib, err := Load(LoadOptions{Path: path})
	require.NoError(t, err)
	return lib
}

func newCtx(t *testing.T, lib *Library) Ctx {
	t.Helper()
	p := lib.DefaultCtxParams()
	p.NThreads = 2
	ctx, err := lib.CtxInit(&p)
	require.NoError(t, err)
	t.Cleanup(func() { lib.CtxFree(ctx) })
	return ctx
}

func TestLoadSearchOrder(t *testing.T) {
	lib := loadCPU(t)
	assert.Equal(t, uint32(ABIVersion), lib.ABIVersion())
	assert.Equal(t, "invalid argument", lib.StatusString(StatusInvalidArgument))
	ok, why := lib.BackendAvailable(BackendCPU)
	assert.True(t, ok, why)

	// With no options the build tree above the working directory is found.
	t.Setenv(EnvLibrary, "")
	found, err := Load(LoadOptions{Backend: PreferCPU})
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(buildDir(t), libFile(false)), found.Path())

	// SD_LIB naming a directory is searched like the default places.
	t.Setenv(EnvLibrary, buildDir(t))
	found, err = Load(LoadOptions{Backend: PreferCPU})
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(buildDir(t), libFile(false)), found.Path())
}

func TestLoadErrors(t *testing.T) {
	stubs := filepath.Join(buildDir(t), "stubs")
	if _, err := os.Stat(stubs); err != nil {
		t.Skipf("stub libraries not built (%s): run `make` first", stubs)
	}
	stub := func(name string) string { return filepath.Join(stubs, "libsd-stub-"+name+".so") }
	cases := []struct {
		name string
		path string
		want error
		msg  string
	}{
		{"missing file", filepath.Join(t.TempDir(), "libsd.so"), ErrLibraryNotFound, "libsd.so"},
		{"not a library", writeFile(t, "libsd.so", "not an ELF file"), ErrLibraryNotFound, "libsd.so"},
		{"wrong ABI", stub("bad-abi"), ErrABIMismatch, fmt.Sprintf("ABI version %d", ABIVersion+1000)},
		{"wrong struct size", stub("bad-size"), ErrABIMismatch,
			fmt.Sprintf("sd_ctx_params_t is %d bytes", unsafe.Sizeof(CtxParams{})+8)},
		{"missing function", stub("no-syms"), ErrMissingSymbol, "sd_status_string"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lib, err := Load(LoadOptions{Path: tc.path})
			assert.Nil(t, lib)
			require.Error(t, err)
			assert.ErrorIs(t, err, tc.want)
			assert.Contains(t, err.Error(), tc.msg)
			assert.True(t, IsLoadError(err))
		})
	}

	// An empty directory has nothing to offer.
	_, err := Load(LoadOptions{Path: t.TempDir()})
	assert.ErrorIs(t, err, ErrLibraryNotFound)

	// A CUDA build is required but not available: the CPU library cannot stand in.
	if runtime.GOOS == "linux" {
		_, err = Load(LoadOptions{Path: buildDir(t), Backend: PreferCUDA})
		assert.Error(t, err)
	}
}

func writeFile(t *testing.T, name, content string) string {
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	return p
}

// A real round trip: upload, a linear op, download, against a Go reference.
func TestLinearRoundTrip(t *testing.T) {
	lib := loadCPU(t)
	ctx := newCtx(t, lib)
	const rows, k, n = 5, 7, 3
	x := make([]float32, rows*k)
	w := make([]float32, n*k)
	b := []float32{0.5, -1, 2}
	for i := range x {
		x[i] = float32(math.Sin(float64(i)))
	}
	for i := range w {
		w[i] = float32(math.Cos(float64(i)))
	}
	tx, err := lib.TensorNew(ctx, F32, 1, rows, k)
	require.NoError(t, err)
	tw, err := lib.TensorNew(ctx, F32, n, k)
	require.NoError(t, err)
	tb, err := lib.TensorNew(ctx, F32, n)
	require.NoError(t, err)
	out, err := lib.TensorNew(ctx, F32, 1, rows, n)
	require.NoError(t, err)
	require.NoError(t, lib.UploadFloat32(ctx, tx, x))
	require.NoError(t, lib.UploadFloat32(ctx, tw, w))
	require.NoError(t, lib.UploadFloat32(ctx, tb, b))
	assert.Equal(t, []int64{1, rows, n}, lib.TensorShape(out))
	assert.Equal(t, F32, lib.TensorDType(out))
	assert.Equal(t, rows*n*4, lib.TensorNBytes(out))

	p := lib.DefaultLinearParams()
	require.NoError(t, lib.OpLinear(ctx, out, tx, tw, tb, 0, &p))
	got := make([]float32, rows*n)
	require.NoError(t, lib.DownloadFloat32(ctx, out, got))
	for r := 0; r < rows; r++ {
		for o := 0; o < n; o++ {
			want := float64(b[o])
			for i := 0; i < k; i++ {
				want += float64(x[r*k+i]) * float64(w[o*k+i])
			}
			assert.InDelta(t, want, float64(got[r*n+o]), 1e-5, "row %d col %d", r, o)
		}
	}
	stats, err := lib.CtxMemoryStats(ctx)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, stats.TensorsBytes, uint64(4*(rows*k+n*k+n+rows*n)))
	for _, tt := range []Tensor{tx, tw, tb, out} {
		lib.TensorFree(ctx, tt)
	}
}

func TestCallErrors(t *testing.T) {
	lib := loadCPU(t)
	ctx := newCtx(t, lib)

	// A bad argument: the error carries the op, the status and the context's message.
	a, err := lib.TensorNew(ctx, F32, 2, 3)
	require.NoError(t, err)
	b, err := lib.TensorNew(ctx, F32, 4)
	require.NoError(t, err)
	err = lib.OpAdd(ctx, a, a, b)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrInvalidArgument)
	assert.NotErrorIs(t, err, ErrCancelled)
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, "sd_op_add", e.Op)
	assert.Equal(t, StatusInvalidArgument, e.Code)
	assert.Contains(t, e.Msg, "suffix")
	assert.Equal(t, e.Msg, lib.CtxLastError(ctx))

	_, err = lib.TensorNew(ctx, F32, 2, 0)
	assert.ErrorIs(t, err, ErrInvalidArgument)
	_, err = lib.TensorNew(ctx, DType(9), 2)
	assert.ErrorIs(t, err, ErrInvalidArgument)
	assert.ErrorIs(t, lib.UploadFloat32(ctx, a, make([]float32, 5)), ErrInvalidArgument)

	// Cancellation, from another goroutine.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); lib.CtxCancel(ctx) }()
	wg.Wait()
	err = lib.OpActivation(ctx, a, a, ActSiLU)
	assert.ErrorIs(t, err, ErrCancelled)
	lib.CtxClearCancel(ctx)
	assert.NoError(t, lib.OpActivation(ctx, a, a, ActSiLU))

	// Context creation errors carry the message written into the caller's buffer.
	p := lib.DefaultCtxParams()
	p.NThreads = -3
	_, err = lib.CtxInit(&p)
	assert.ErrorIs(t, err, ErrInvalidArgument)
	assert.Contains(t, err.Error(), "n_threads")
	p = lib.DefaultCtxParams()
	p.Backend = BackendCUDA
	_, err = lib.CtxInit(&p)
	assert.ErrorIs(t, err, ErrUnsupported, "the CPU build has no CUDA backend")
	p = lib.DefaultCtxParams()
	assert.Equal(t, PrecisionF32, p.Precision)
	p.Precision = 9
	_, err = lib.CtxInit(&p)
	assert.ErrorIs(t, err, ErrInvalidArgument)
	assert.Contains(t, err.Error(), "precision")
}

// BF16 runs where the CPU has AVX512_BF16 and is refused, saying so, elsewhere.
func TestCtxInitBF16(t *testing.T) {
	lib := loadCPU(t)
	p := lib.DefaultCtxParams()
	p.Precision = PrecisionBF16
	ctx, err := lib.CtxInit(&p)
	if err != nil {
		assert.ErrorIs(t, err, ErrUnsupported)
		assert.Contains(t, err.Error(), "bf16")
		return
	}
	defer lib.CtxFree(ctx)
	assert.Contains(t, lib.CtxBackendDescription(ctx), "bf16 compute")
}

// A context made with CtxInitShared is a context of its own (tensors, errors) in the
// group of the one it shares with; it must run on the same backend.
func TestCtxInitShared(t *testing.T) {
	lib := loadCPU(t)
	ctx := newCtx(t, lib)
	p := lib.DefaultCtxParams()
	p.NThreads = 1
	shared, err := lib.CtxInitShared(ctx, &p)
	require.NoError(t, err)
	defer lib.CtxFree(shared)
	assert.Equal(t, BackendCPU, lib.CtxBackend(shared))
	a, err := lib.TensorNew(shared, F32, 4)
	require.NoError(t, err)
	b, err := lib.TensorNew(shared, F32, 3)
	require.NoError(t, err)
	assert.ErrorIs(t, lib.OpAdd(shared, a, a, b), ErrInvalidArgument)
	assert.Equal(t, "", lib.CtxLastError(ctx), "errors stay on the context that made them")

	p.Backend = BackendCUDA
	_, err = lib.CtxInitShared(ctx, &p)
	assert.ErrorIs(t, err, ErrInvalidArgument)
	assert.Contains(t, err.Error(), "the context to share with runs on backend 0")
}

func TestLogCallback(t *testing.T) {
	lib := loadCPU(t)
	ctx := newCtx(t, lib)
	var got []string
	lib.CtxSetLog(ctx, func(level LogLevel, msg string) {
		assert.Equal(t, LogDebug, level)
		got = append(got, msg)
	})
	x, err := lib.TensorNew(ctx, F32, 3)
	require.NoError(t, err)
	assert.Error(t, lib.TensorUpload(ctx, x, []byte{1, 2}))
	require.Len(t, got, 1)
	assert.Contains(t, got[0], "2 bytes given")

	// A second context has its own sink; removing the first stops its messages.
	ctx2 := newCtx(t, lib)
	var got2 int
	lib.CtxSetLog(ctx2, func(LogLevel, string) { got2++ })
	lib.CtxSetLog(ctx, nil)
	assert.Error(t, lib.TensorUpload(ctx, x, nil))
	y, err := lib.TensorNew(ctx2, F32, 1)
	require.NoError(t, err)
	assert.Error(t, lib.TensorUpload(ctx2, y, nil))
	assert.Len(t, got, 1)
	assert.Equal(t, 1, got2)
}

func TestStatusAndErrorStrings(t *testing.T) {
	statuses := []Status{StatusInvalidArgument, StatusIO, StatusBadModel, StatusOutOfMemory,
		StatusDevice, StatusUnsupported, StatusCancelled, StatusInternal}
	for _, s := range statuses {
		e := &Error{Code: s, Op: "sd_x"}
		assert.ErrorIs(t, e, s.Sentinel())
		assert.Equal(t, "sd_x: "+s.String(), e.Error())
	}
	assert.Equal(t, "ok", StatusOK.String())
	assert.Equal(t, "unknown status 5", Status(5).String())
	assert.Nil(t, Status(5).Sentinel())
	e := &Error{Code: StatusIO, Op: "sd_y", Msg: "disk"}
	assert.Equal(t, "sd_y: i/o error: disk", e.Error())
	assert.False(t, errors.Is(e, ErrDevice))
	assert.Equal(t, "cpu", BackendCPU.String())
	assert.Equal(t, 2, F16.Size())
	assert.Equal(t, "bf16", BF16.String())
}
