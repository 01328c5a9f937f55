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
