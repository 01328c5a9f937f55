package diffusion

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The kit's whole pipelines on the GPU (fp16 activations, fp32 accumulation): final images
// within 40 dB PSNR of diffusers' float32 goldens. Skips without libsd-cuda and a GPU.
func TestTxt2ImgCUDAPSNR(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	lib := filepath.Join(testutil.RepoRoot(t), "build")
	for _, model := range []string{"sd1-tiny", "sd2-tiny-v"} {
		p, err := Open(filepath.Join(kit, model, "diffusers"), WithDevice(DeviceCUDA), WithLibrary(lib))
		if errors.Is(err, ErrDevice) || errors.Is(err, ErrLibraryNotFound) {
			t.Skipf("no usable GPU build: %v", err)
		}
		require.NoError(t, err)
		assert.Equal(t, DeviceCUDA, p.Info().Device)
		for _, run := range kitRuns {
			g := openGolden(t, filepath.Join(kit, model, "txt2img-"+run.name+".safetensors"))
			res, err := p.Txt2Img(context.Background(), kitRequest(run.sampler))
			require.NoError(t, err)
			ref, _ := g.floats("image")
			db := psnr(imageCHW(res.Images[0]), ref)
			t.Logf("%s/%s on %s: PSNR %.1f dB", model, run.name, p.Info().Backend, db)
			assert.GreaterOrEqual(t, db, 40.0, "%s/%s", model, run.name)
		}
		require.NoError(t, p.Close())
	}
}

// The kit's ControlNet pipelines on the GPU: final images within 40 dB PSNR of diffusers'
// float32 goldens. Skips without libsd-cuda and a GPU.
func TestControlNetCUDAPSNR(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	dir := kitDir(t, "controlnet-tiny")
	lib := filepath.Join(testutil.RepoRoot(t), "build")
	p, err := Open(filepath.Join(kit, "sd1-tiny", "diffusers"), WithDevice(DeviceCUDA), WithLibrary(lib))
	if errors.Is(err, ErrDevice) || errors.Is(err, ErrLibraryNotFound) {
		t.Skipf("no usable GPU build: %v", err)
	}
	require.NoError(t, err)
	defer p.Close()
	cn, err := p.LoadControlNet(filepath.Join(dir, "controlnet-tiny-ldm.safetensors"))
	require.NoError(t, err)
	defer cn.Close()
	img := kitControlImage(t)
	for _, run := range []struct {
		name    string
		sampler Sampler
		guess   bool
	}{{"ddim", DDIM, false}, {"euler", Euler, false}, {"ddim-guess", DDIM, true}} {
		g := openGolden(t, filepath.Join(dir, "controlnet-"+run.name+".safetensors"))
		req := kitRequest(run.sampler)
		call := kitControlCall(t, run.name)
		require.Equal(t, run.guess, call.Call.Guess)
		req.Controls = []Control{{Model: cn, Image: img, Scale: call.Call.Scale, Start: call.Call.Start,
			End: call.Call.End, GuessMode: call.Call.Guess}}
		res, err := p.Txt2Img(context.Background(), req)
		require.NoError(t, err)
		ref, _ := g.floats("image")
		db := psnr(imageCHW(res.Images[0]), ref)
		t.Logf("controlnet-%s on %s: PSNR %.1f dB", run.name, p.Info().Backend, db)
		assert.GreaterOrEqual(t, db, 40.0, run.name)
	}
}
