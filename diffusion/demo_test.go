package diffusion

import (
	"context"
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The bundled demo model, trained weights, through the whole runtime: the image must match
// the one its training code's own PyTorch sampler draws from the same exported folder. The
// reference is regenerated whenever the model changes, with
//
//	cd tools/train && python3 sample.py --model ../../models/gosd-emoji --prompt "a red apple" \
//	    --seed 1 --steps 25 --guidance 5 --sampler ddim --device cpu --save-each /tmp/ref
//
// and /tmp/ref/000-seed1.png copied to testdata/gosd-emoji-red-apple-seed1.png.
func TestDemoModelMatchesTrainer(t *testing.T) {
	root := testutil.RepoRoot(t)
	testLibrary(t)
	p, err := Open(filepath.Join(root, "models", "gosd-emoji"), WithDevice(DeviceCPU), WithThreads(2),
		WithLibrary(filepath.Join(root, "build")))
	require.NoError(t, err)
	defer p.Close()

	f, err := os.Open(filepath.Join("testdata", "gosd-emoji-red-apple-seed1.png"))
	require.NoError(t, err)
	defer f.Close()
	ref, err := png.Decode(f)
	require.NoError(t, err)
	refCHW := imageCHW(ref)
	refFloats := make([]float32, len(refCHW))
	for i, v := range refCHW {
		refFloats[i] = float32(v) / 255
	}

	res, err := p.Txt2Img(context.Background(), Request{
		Prompt: "a red apple", Seed: 1, Steps: 25, GuidanceScale: 5, Sampler: DDIM,
	})
	require.NoError(t, err)
	got := res.Images[0]
	require.Equal(t, ref.Bounds().Size(), got.Bounds().Size())
	db := psnr(imageCHW(got), refFloats)
	t.Logf("demo model vs PyTorch trainer: PSNR %.1f dB", db)
	assert.GreaterOrEqual(t, db, 40.0)
}
