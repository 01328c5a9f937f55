package diffusion

import (
	"context"
	"fmt"
	"image"
	"math"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/diffusion/schedule"
	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func openTiny(t *testing.T, model string) *Pipeline { return openTinyWith(t, model) }

// openTinyWith opens a kit model on the CPU with further options.
func openTinyWith(t *testing.T, model string, opts ...Option) *Pipeline {
	t.Helper()
	kit := testutil.ConformanceDir(t)
	testLibrary(t)
	p, err := Open(filepath.Join(kit, model, "diffusers"), append([]Option{WithDevice(DeviceCPU), WithThreads(2),
		WithLibrary(filepath.Join(testutil.RepoRoot(t), "build"))}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

// The kit's whole-pipeline runs: prompt, negative prompt, 6 steps, CFG 7.5, 64x64, seed 50
// on the CPU generator (which reproduces the kit's init_latents).
var kitRuns = []struct {
	name    string
	sampler Sampler
}{{"ddim", DDIM}, {"euler", Euler}, {"dpmpp2m", DPMPP2M}}

// assertTeacherForcedSteps runs every sampler step of a kit run from diffusers' own
// latents of the step before (its init_latents first): each step's result must match the
// kit's next latents within the tolerance.
func assertTeacherForcedSteps(t *testing.T, d *denoiser, sched schedule.Scheduler, g *goldenFile) {
	t.Helper()
	x, _ := g.floats("init_latents")
	scale(x, float32(sched.InitNoiseSigma()))
	for i, ts := range sched.Timesteps() {
		noise, err := d.predict(sched.ScaleModelInput(x, i), ts, i+1)
		require.NoError(t, err)
		next, err := sched.Step(noise, i, x, nil)
		require.NoError(t, err)
		ref, _ := g.floats(fmt.Sprintf("step%02d.latents", i))
		assertClose(t, fmt.Sprintf("step%02d.latents (from diffusers' step%02d)", i, i-1), next, ref)
		x = ref
	}
}

func kitRequest(s Sampler) Request {
	return Request{
		Prompt: "a red apple on a table", NegativePrompt: "blurry",
		Width: 64, Height: 64, Steps: 6, GuidanceScale: 7.5, Sampler: s, Seed: 50,
	}
}

// Every sampler step of diffusers' StableDiffusionPipeline, restarted from diffusers' own
// latents of the previous step: the UNet with classifier-free guidance (one batch of 2)
// and the scheduler step must reproduce the next latents within the kit's tolerance.
func TestTxt2ImgStepsMatchDiffusers(t *testing.T) {
	for _, model := range []string{"sd1-tiny", "sd2-tiny-v"} {
		for _, run := range kitRuns {
			t.Run(model+"/"+run.name, func(t *testing.T) {
				p := openTiny(t, model)
				g := openGolden(t, filepath.Join(testutil.ConformanceDir(t), model, "txt2img-"+run.name+".safetensors"))
				par, sched, err := p.desc.plan(kitRequest(run.sampler), nil)
				require.NoError(t, err)
				cond, err := p.conditioner().condition(par, true)
				require.NoError(t, err)
				defer cond.free()
				// The context is made in the backend's activation dtype once, so no UNet call
				// converts it (F16 on CUDA).
				assert.Equal(t, p.eng.lib.CtxActivationDType(p.eng.ctx), p.eng.lib.TensorDType(cond.context))
				d := &denoiser{unet: p.eng.unetNet(), cond: cond, batch: 1, h: 8, w: 8, guidance: 7.5}
				refT, _ := g.floats("timesteps")
				got := make([]float32, len(sched.Timesteps()))
				for i, ts := range sched.Timesteps() {
					got[i] = float32(ts)
				}
				assert.Equal(t, refT, got, "timesteps")

				assertTeacherForcedSteps(t, d, sched, g)
			})
		}
	}
}

func imageCHW(img image.Image) []uint8 {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	out := make([]uint8, 3*w*h)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			r, g, bl, _ := img.At(b.Min.X+x, b.Min.Y+y).RGBA()
			out[y*w+x], out[w*h+y*w+x], out[2*w*h+y*w+x] = uint8(r>>8), uint8(g>>8), uint8(bl>>8)
		}
	}
	return out
}

// psnr of an 8-bit image against a float reference in [0, 1].
func psnr(got []uint8, ref []float32) float64 {
	var mse float64
	for i := range ref {
		d := float64(got[i])/255 - float64(ref[i])
		mse += d * d
	}
	return 10 * math.Log10(float64(len(ref))/mse)
}

// Whole txt2img runs through the public API, free-running from the seed. SD 1.x stays
// within the kit's tolerance at every step. The SD 2.x tiny model's trajectory is
// sensitive to float32 rounding (at t=665 diffusers' own float32 result is 1.4e-5 away
// from the float64 one, and DPM++ amplifies such differences), so its latents are held to
// a looser drift bound and its image to the kit's 40 dB PSNR criterion; each of its steps
// on diffusers' latents matches within tolerance (TestTxt2ImgStepsMatchDiffusers).
func TestTxt2ImgMatchesDiffusers(t *testing.T) {
	for _, model := range []string{"sd1-tiny", "sd2-tiny-v"} {
		for _, run := range kitRuns {
			t.Run(model+"/"+run.name, func(t *testing.T) {
				p := openTiny(t, model)
				g := openGolden(t, filepath.Join(testutil.ConformanceDir(t), model, "txt2img-"+run.name+".safetensors"))
				var steps [][]float32
				req := kitRequest(run.sampler)
				req.onStep = func(step int, x []float32) { steps = append(steps, append([]float32(nil), x...)) }
				res, err := p.Txt2Img(context.Background(), req)
				require.NoError(t, err)
				require.Len(t, steps, 6)
				drift := conformanceTol
				if model == "sd2-tiny-v" {
					drift = 0.05
				}
				for i, x := range steps {
					ref, _ := g.floats(fmt.Sprintf("step%02d.latents", i))
					e := relErr(x, ref)
					t.Logf("step%02d.latents free-running: %.2e", i, e)
					assert.LessOrEqual(t, e, drift, "step %d", i)
				}
				ref, _ := g.floats("image")
				require.Equal(t, image.Rect(0, 0, 64, 64), res.Images[0].Bounds())
				got := imageCHW(res.Images[0])
				var worst float64
				for i := range ref {
					worst = math.Max(worst, math.Abs(float64(got[i])-float64(ref[i])*255))
				}
				db := psnr(got, ref)
				t.Logf("image: max |pixel - 255 ref| = %.3f levels, PSNR %.1f dB", worst, db)
				if model == "sd1-tiny" {
					assert.LessOrEqual(t, worst, 0.51, "8-bit rounding of the reference")
				}
				assert.GreaterOrEqual(t, db, 40.0)
				assert.Equal(t, 6, res.Params.Steps)
				assert.Equal(t, run.sampler, res.Params.Sampler)
			})
		}
	}
}
