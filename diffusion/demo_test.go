package diffusion

import (
	"context"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// openDemo opens the bundled demo model on the CPU.
func openDemo(t *testing.T) *Pipeline {
	t.Helper()
	root := testutil.RepoRoot(t)
	testLibrary(t)
	p, err := Open(filepath.Join(root, "models", "gosd-emoji"), WithDevice(DeviceCPU), WithThreads(2),
		WithLibrary(filepath.Join(root, "build")))
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

// The bundled demo model, trained weights, through the whole runtime: the image must match
// the one its training code's own PyTorch sampler draws from the same exported folder. The
// reference is regenerated whenever the model changes, with
//
//	cd tools/train && python3 sample.py --model ../../models/gosd-emoji --prompt "a red apple" \
//	    --seed 1 --steps 25 --guidance 5 --sampler ddim --device cpu --save-each /tmp/ref
//
// and /tmp/ref/000-seed1.png copied to testdata/gosd-emoji-red-apple-seed1.png.
func TestDemoModelMatchesTrainer(t *testing.T) {
	p := openDemo(t)

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

// The demo ControlNet (models/gosd-emoji-canny) on the edges of a drawn star, through the
// whole runtime: the image must match the one the trainer's PyTorch pipeline draws. The
// reference is regenerated whenever the model or the ControlNet changes, with
//
//	go run ./cmd/sdcli preprocess -i tools/train/shapes/star.png -o diffusion/testdata/star-canny.png canny
//	cd tools/train && python3 sample.py --model ../../models/gosd-emoji --controlnet ../../models/gosd-emoji-canny \
//	    --control-image ../../diffusion/testdata/star-canny.png --prompt "a star" --seed 1 --steps 25 \
//	    --guidance 5 --sampler ddim --device cpu --save-each /tmp/ref
//
// and /tmp/ref/000-seed1.png copied to testdata/gosd-emoji-canny-star-seed1.png.
func TestDemoControlNetMatchesTrainer(t *testing.T) {
	p := openDemo(t)
	cn, err := p.LoadControlNet(filepath.Join(testutil.RepoRoot(t), "models", "gosd-emoji-canny"))
	require.NoError(t, err)
	defer cn.Close()
	decode := func(name string) image.Image {
		f, err := os.Open(filepath.Join("testdata", name))
		require.NoError(t, err)
		defer f.Close()
		img, err := png.Decode(f)
		require.NoError(t, err)
		return img
	}
	edges, ref := decode("star-canny.png"), decode("gosd-emoji-canny-star-seed1.png")
	req := Request{Prompt: "a star", Seed: 1, Steps: 25, GuidanceScale: 5, Sampler: DDIM}
	plain, err := p.Txt2Img(context.Background(), req)
	require.NoError(t, err)
	req.Controls = []Control{{Model: cn, Image: edges}}
	res, err := p.Txt2Img(context.Background(), req)
	require.NoError(t, err)
	refCHW := imageCHW(ref)
	refFloats := make([]float32, len(refCHW))
	for i, v := range refCHW {
		refFloats[i] = float32(v) / 255
	}
	db := psnr(imageCHW(res.Images[0]), refFloats)
	t.Logf("demo ControlNet vs PyTorch trainer: PSNR %.1f dB; without the ControlNet %.1f dB", db, psnr(imageCHW(plain.Images[0]), refFloats))
	assert.GreaterOrEqual(t, db, 40.0)
	assert.Less(t, psnr(imageCHW(plain.Images[0]), refFloats), 30.0, "the ControlNet must change the picture")
}
