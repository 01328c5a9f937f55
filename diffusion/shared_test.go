package diffusion

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// vmRSS is the process's resident memory in bytes (0 where /proc is missing).
func vmRSS(t *testing.T) uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	return 0
}

// A clone runs the same loaded networks on a context of its own: both generate at once
// (run under -race too), each image identical to a lone Pipeline's, and either may close
// first.
func TestClonedPipelinesShareWeights(t *testing.T) {
	testLibrary(t)
	testClones(t, DeviceCPU)
}

// The same on the GPU, where the shared weights are device memory and each context has a
// stream of its own. Skips without libsd-cuda and a GPU.
func TestClonedPipelinesShareWeightsCUDA(t *testing.T) {
	testClones(t, DeviceCUDA)
}

func testClones(t *testing.T, device Device) {
	root := testutil.RepoRoot(t)
	const mib = 1 << 20
	before := vmRSS(t)
	p, err := Open(filepath.Join(root, "models", "gosd-emoji"), WithDevice(device), WithThreads(1),
		WithLibrary(filepath.Join(root, "build")))
	if device == DeviceCUDA && (errors.Is(err, ErrDevice) || errors.Is(err, ErrLibraryNotFound)) {
		t.Skipf("no usable GPU build: %v", err)
	}
	require.NoError(t, err)
	defer p.Close()
	// The CPU's kernels are deterministic; on the GPU a difference between contexts that a
	// lone context would not show is a sharing bug and far larger than rounding.
	same := func(ref, got []uint8, msg string) {
		if device == DeviceCPU || got == nil {
			assert.Equal(t, ref, got, msg)
			return
		}
		refFloats := make([]float32, len(ref))
		for i, v := range ref {
			refFloats[i] = float32(v) / 255
		}
		assert.GreaterOrEqual(t, psnr(got, refFloats), 50.0, msg)
	}
	one := vmRSS(t)
	q, err := p.Clone()
	require.NoError(t, err)
	defer q.Close()
	two := vmRSS(t)

	ps, err := p.MemoryStats()
	require.NoError(t, err)
	qs, err := q.MemoryStats()
	require.NoError(t, err)
	assert.Equal(t, ps.WeightsBytes, qs.WeightsBytes, "one copy of the weights, reported by both")
	t.Logf("VmRSS: opening +%.1f MiB, cloning +%.1f MiB; weights held by the runtime %.1f MiB",
		float64(one-before)/mib, float64(two-one)/mib, float64(ps.WeightsBytes)/mib)
	assert.Equal(t, p.Info(), q.Info())

	req := Request{Prompt: "a red apple", Seed: 3, Steps: 3, GuidanceScale: 5, Sampler: DDIM}
	generate := func(pl *Pipeline) []uint8 {
		res, err := pl.Txt2Img(context.Background(), req)
		if !assert.NoError(t, err) {
			return nil
		}
		return imageCHW(res.Images[0])
	}
	ref := generate(p)
	require.NotNil(t, ref)

	var wg sync.WaitGroup
	got := make([][]uint8, 4)
	for i := range got {
		pl := p
		if i%2 == 1 {
			pl = q
		}
		wg.Go(func() { got[i] = generate(pl) })
	}
	wg.Wait()
	for i, g := range got {
		same(ref, g, fmt.Sprintf("run %d", i))
	}

	// The original first: the clone keeps the networks and the model's files.
	require.NoError(t, p.Close())
	_, err = p.Clone()
	assert.ErrorIs(t, err, ErrClosed)
	r, err := q.Clone()
	require.NoError(t, err)
	require.NoError(t, q.Close())
	same(ref, generate(r), "a clone of a clone, after the others closed")
	require.NoError(t, r.Close())
}
