package diffusion

import (
	"context"
	"math"
	"path/filepath"
	"testing"

	"github.com/gosd/gosd/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The scheduler configs of the distilled few-step models, key for key as their Hub
// folders ship them (stabilityai/sd-turbo: Euler; sdxl-turbo: Euler ancestral; both with
// trailing spacing, which puts the single step at t = 999).
const (
	sdTurboScheduler = `{"_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.24.0.dev0",
		"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": false,
		"interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
		"sample_max_value": 1.0, "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1,
		"timestep_spacing": "trailing", "trained_betas": null, "use_karras_sigmas": false}`
	sdxlTurboScheduler = `{"_class_name": "EulerAncestralDiscreteScheduler", "_diffusers_version": "0.24.0.dev0",
		"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": false,
		"interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
		"sample_max_value": 1.0, "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1,
		"timestep_spacing": "trailing", "trained_betas": null, "use_karras_sigmas": false}`
)

// sigmaMax is sqrt((1 - ᾱ_999) / ᾱ_999) of the scaled_linear 0.00085..0.012 schedule, in
// float64 (diffusers: 14.6146).
func sigmaMax() float64 {
	acp := 1.0
	for i := range 1000 {
		beta := math.Pow(math.Sqrt(0.00085)+(math.Sqrt(0.012)-math.Sqrt(0.00085))*float64(i)/999, 2)
		acp *= 1 - beta
	}
	return math.Sqrt((1 - acp) / acp)
}

// A turbo-style folder run as `sdcli txt2img --steps 1 --cfg 1` runs: the sampler and the
// trailing spacing come from its scheduler config, the one step is at t = 999 from
// σ_max, and with σ_next = 0 Euler (ancestral or not, whose noise vanishes there) lands
// on x0 = σ_max·noise − σ_max·ε(x0/√(σ_max²+1), 999): the final latents are checked
// against that, from one UNet evaluation of our own.
func TestFewStepDefaultsFromSchedulerConfig(t *testing.T) {
	lib := filepath.Join(testutil.RepoRoot(t), "build")
	testLibrary(t)
	for _, tc := range []struct {
		name, config string
		sampler      Sampler
	}{{"sd-turbo", sdTurboScheduler, Euler}, {"sdxl-turbo", sdxlTurboScheduler, EulerAncestral}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := testutil.KitFolder(t, "sd1-tiny/diffusers", map[string][]byte{"scheduler/scheduler_config.json": []byte(tc.config)})
			p, err := Open(dir, WithDevice(DeviceCPU), WithThreads(2), WithLibrary(lib))
			require.NoError(t, err)
			defer p.Close()
			assert.Equal(t, tc.sampler, p.Info().DefaultSampler)

			req := Request{Prompt: "a red apple", Steps: 1, GuidanceScale: 1, Seed: 7, Width: 64, Height: 64}
			par, sched, err := p.desc.plan(req, nil)
			require.NoError(t, err)
			assert.Equal(t, tc.sampler, par.Sampler)
			assert.Equal(t, "trailing", par.TimestepSpacing.String())
			assert.Equal(t, []float64{999}, sched.Timesteps())
			smax := sigmaMax()
			assert.InDelta(t, smax, sched.InitNoiseSigma(), 1e-4*smax, "trailing: σ_max itself, not √(σ_max²+1)")

			var final []float32
			req.onStep = func(_ int, x []float32) { final = append([]float32(nil), x...) }
			res, err := p.Txt2Img(context.Background(), req)
			require.NoError(t, err)
			assert.Equal(t, 1, res.Params.Steps)

			noise := make([]float32, len(final))
			newBatchGenerator(par.RNG, par.Seed, 1).Normal(noise)
			x0 := make([]float32, len(noise))
			in := make([]float32, len(noise))
			for k, v := range noise {
				x0[k] = float32(float64(v) * smax)
				in[k] = float32(float64(x0[k]) / math.Sqrt(smax*smax+1))
			}
			cond, err := p.conditioner().condition(par, false)
			require.NoError(t, err)
			defer cond.free()
			d := &denoiser{unet: p.eng.unetNet(), cond: cond, batch: 1, h: 8, w: 8, guidance: 1}
			eps, err := d.predict(in, 999, 1)
			require.NoError(t, err)
			want := make([]float32, len(eps))
			for k := range want {
				want[k] = float32(float64(x0[k]) - smax*float64(eps[k]))
			}
			assertClose(t, "one-step latents", final, want)
		})
	}
}
