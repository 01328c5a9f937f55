package diffusion

import (
	"context"
	"fmt"
	"image"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/binding"
	"github.com/gosd/gosd/diffusion/modelfile"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// loadTestTAESD loads a TAESD of the kit's taesd-tiny folder into a fresh engine.
func loadTestTAESD(t *testing.T, rel string) (*engine, *modelfile.TAESD) {
	t.Helper()
	lib := testLibrary(t)
	tm, err := modelfile.LoadTAESD(filepath.Join(testutil.ConformanceDir(t), "taesd-tiny", rel))
	require.NoError(t, err)
	t.Cleanup(func() { tm.Close() })
	e, err := newEngine(lib, binding.BackendCPU, 2)
	require.NoError(t, err)
	t.Cleanup(e.close)
	require.NoError(t, e.loadTAESD(tm))
	return e, tm
}

// TAESD's encoder and decoder against diffusers' AutoencoderTiny, through the codec (so
// with diffusers' [-1, 1] convention and latent scaling), from each layout: the diffusers
// folder, the original layout's folder and its two files alone.
func TestTAESDMatchesDiffusers(t *testing.T) {
	testutil.ConformanceDir(t)
	cases := []struct {
		name             string
		rel              string
		encoder, decoder bool
	}{
		{"diffusers folder", "diffusers", true, true},
		{"original folder", ".", true, true},
		{"original encoder file", "taesd_encoder.safetensors", true, false},
		{"original decoder file", "taesd_decoder.safetensors", false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, tm := loadTestTAESD(t, tc.rel)
			assert.Equal(t, tc.encoder, tm.Config.HasEncoder())
			assert.Equal(t, tc.decoder, tm.Config.HasDecoder())
			c := newTAESDCodec(e.taesdNet(), tm.Config)
			g := openGolden(t, filepath.Join(testutil.ConformanceDir(t), "taesd-tiny", "golden.safetensors"))
			for _, d := range []string{"decode", "decode2"} {
				z, zs := g.floats(d + ".z")
				got, err := c.decode(z, int(zs[0]), int(zs[2]), int(zs[3]))
				if !tc.decoder {
					require.ErrorIs(t, err, ErrInvalidRequest)
					continue
				}
				require.NoError(t, err)
				ref, _ := g.floats(d + ".out")
				assertClose(t, d+".out", got, ref)
			}
			for _, enc := range []string{"encode", "encode2"} {
				x, xs := g.floats(enc + ".x")
				dist, err := c.encode(x, int(xs[0]), int(xs[2]), int(xs[3]))
				if !tc.encoder {
					require.ErrorIs(t, err, ErrInvalidRequest)
					continue
				}
				require.NoError(t, err)
				ref, _ := g.floats(enc + ".latents")
				assertClose(t, enc+".latents", dist.mean, ref)
				// Sampling a deterministic encoder's distribution is its output.
				eps := make([]float32, len(ref))
				for k := range eps {
					eps[k] = 1
				}
				assert.Equal(t, dist.mean, dist.sample(eps))
			}
		})
	}
}

// Odd sizes: each stride-2 conv maps n to ceil(n / 2), and the decoder multiplies by 8.
func TestTAESDShapes(t *testing.T) {
	e, tm := loadTestTAESD(t, "diffusers")
	n := e.taesdNet()
	for _, s := range []struct{ h, w, lh, lw int }{{64, 48, 8, 6}, {65, 47, 9, 6}, {9, 17, 2, 3}, {1, 1, 1, 1}} {
		z, err := n.encode(make([]float32, 3*s.h*s.w), 1, s.h, s.w)
		require.NoError(t, err, "%dx%d", s.h, s.w)
		assert.Len(t, z, 4*s.lh*s.lw, "%dx%d", s.h, s.w)
	}
	y, err := n.decode(make([]float32, 4*3*5), 1, 3, 5)
	require.NoError(t, err)
	assert.Len(t, y, 3*24*40)
	assert.Equal(t, 8, tm.Config.Factor())
}

// The kit's txt2img-ddim-taesd: sd1-tiny's DDIM run with the final image decoded by TAESD.
func TestTxt2ImgTAESDMatchesDiffusers(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	p := openTinyWith(t, "sd1-tiny", WithTAESD(filepath.Join(kit, "taesd-tiny", "diffusers")))
	g := openGolden(t, filepath.Join(kit, "taesd-tiny", "txt2img-ddim-taesd.safetensors"))
	req := kitRequest(DDIM)
	req.Decoder = DecoderTAESD
	var last []float32
	req.onStep = func(step int, x []float32) { last = append([]float32(nil), x...) }
	res, err := p.Txt2Img(context.Background(), req)
	require.NoError(t, err)
	refLat, _ := g.floats("step05.latents")
	assertClose(t, "step05.latents", last, refLat)
	assertImageClose(t, res.Images[0], g)

	// The same request through the VAE differs (the kit: by up to 1.0).
	req.Decoder = DecoderVAE
	req.onStep = nil
	vae, err := p.Txt2Img(context.Background(), req)
	require.NoError(t, err)
	assert.NotEqual(t, imageCHW(res.Images[0]), imageCHW(vae.Images[0]))
}

// With a TAESD every preview is its decoding of the step's latents at the final size;
// without, the linear preview at latent size.
func TestTAESDPreview(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	for _, withTAESD := range []bool{true, false} {
		t.Run(fmt.Sprint("taesd=", withTAESD), func(t *testing.T) {
			var opts []Option
			if withTAESD {
				opts = append(opts, WithTAESD(filepath.Join(kit, "taesd-tiny")))
			}
			p := openTinyWith(t, "sd1-tiny", opts...)
			req := kitRequest(Euler)
			req.Steps = 3
			req.Preview = true
			var steps [][]float32
			var previews []image.Image
			req.onStep = func(step int, x []float32) { steps = append(steps, append([]float32(nil), x...)) }
			req.Progress = func(pr Progress) { previews = append(previews, pr.Preview) }
			_, err := p.Txt2Img(context.Background(), req)
			require.NoError(t, err)
			require.Len(t, previews, 3)
			for i, img := range previews {
				require.NotNil(t, img)
				if !withTAESD {
					assert.Equal(t, image.Rect(0, 0, 8, 8), img.Bounds())
					continue
				}
				assert.Equal(t, image.Rect(0, 0, 64, 64), img.Bounds())
				c, _ := p.taesdCodec()
				pix, err := c.decode(steps[i], 1, 8, 8)
				require.NoError(t, err)
				assert.Equal(t, imageCHW(toImages(pix, 1, 64, 64)[0]), imageCHW(img), "preview %d", i)
			}
		})
	}
}

func TestTAESDErrors(t *testing.T) {
	kit := testutil.ConformanceDir(t)
	p := openTiny(t, "sd1-tiny")
	req := kitRequest(DDIM)
	req.Decoder = DecoderTAESD
	_, err := p.Txt2Img(context.Background(), req)
	require.ErrorIs(t, err, ErrInvalidRequest, "no TAESD opened")
	req.Decoder = Decoder(7)
	_, err = p.Txt2Img(context.Background(), req)
	require.ErrorIs(t, err, ErrInvalidRequest)

	// A TAESD needs its decoder to be of use to a pipeline.
	_, err = Open(filepath.Join(kit, "sd1-tiny", "diffusers"), WithDevice(DeviceCPU),
		WithLibrary(filepath.Join(testutil.RepoRoot(t), "build")),
		WithTAESD(filepath.Join(kit, "taesd-tiny", "taesd_encoder.safetensors")))
	require.ErrorIs(t, err, ErrBadModel)
	_, err = Open(filepath.Join(kit, "sd1-tiny", "diffusers"), WithDevice(DeviceCPU),
		WithLibrary(filepath.Join(testutil.RepoRoot(t), "build")),
		WithTAESD(filepath.Join(kit, "sd1-tiny", "diffusers", "vae")))
	require.ErrorIs(t, err, ErrUnsupported, "an AutoencoderKL folder is no TAESD")
}

func TestParseVAEDecoder(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Decoder
		path string
		ok   bool
	}{
		{"vae", DecoderVAE, "", true},
		{"", DecoderVAE, "", true},
		{"taesd:/m/taesd", DecoderTAESD, "/m/taesd", true},
		{"TAESD:x:y", DecoderTAESD, "x:y", true},
		{"taesd:", 0, "", false},
		{"taesd", 0, "", false},
		{"tiny:/x", 0, "", false},
	} {
		d, path, err := ParseVAEDecoder(tc.in)
		if !tc.ok {
			assert.Error(t, err, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, d, tc.in)
		assert.Equal(t, tc.path, path, tc.in)
	}
}
