package schedule

import (
	"math"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sd1 is the SD 1.x schedule without PNDM specifics, as the kit's "sd1".
var sd1 = Config{BetaStart: 0.00085, BetaEnd: 0.012, BetaSchedule: BetaScaledLinear, TimestepSpacing: SpacingLeading, StepsOffset: 1}

var allSamplers = []Sampler{DDPM, DDIM, PNDM, Euler, EulerAncestral, Heun, DPM2, DPMPP2M, DPMPP2SAncestral, LMS, UniPC, LCM}

// countingNoise returns a constant and counts its calls.
type countingNoise struct {
	value float32
	calls int
}

func (n *countingNoise) Normal(dst []float32) {
	n.calls++
	for i := range dst {
		dst[i] = n.value
	}
}

func TestConfigDefaultsReachSchedulers(t *testing.T) {
	// SD 1.x runs PNDM without the Runge-Kutta warm-up: one repeated
	// timestep, steps+1 model calls.
	s, err := New(DefaultConfig(), Options{Sampler: PNDM}, 10)
	require.NoError(t, err)
	assert.Equal(t, []float64{901, 801, 801, 701, 601, 501, 401, 301, 201, 101, 1}, s.Timesteps())

	// DDIMScheduler() defaults: linear betas, leading spacing, offset 0.
	s, err = New(Config{}, Options{Sampler: DDIM}, 10)
	require.NoError(t, err)
	assert.Equal(t, []float64{900, 800, 700, 600, 500, 400, 300, 200, 100, 0}, s.Timesteps())

	// The same file with Euler: EulerDiscreteScheduler()'s linspace.
	s, err = New(Config{}, Options{Sampler: Euler}, 10)
	require.NoError(t, err)
	assert.Equal(t, []float64{999, 888, 777, 666, 555, 444, 333, 222, 111, 0}, s.Timesteps())

	// A file that sets leading spacing passes it to Euler, and with it the
	// √(σ²+1) initial noise scale.
	s, err = New(Config{ClassName: "PNDMScheduler", TimestepSpacing: SpacingLeading, StepsOffset: 1}, Options{Sampler: Euler}, 10)
	require.NoError(t, err)
	assert.Equal(t, 901.0, s.Timesteps()[0])
	sigma := s.Sigmas()[0]
	assert.InDelta(t, sigma*sigma+1, s.InitNoiseSigma()*s.InitNoiseSigma(), 1e-5*sigma*sigma)
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		opts  Options
		steps int
	}{
		{"zero steps", sd1, Options{Sampler: Euler}, 0},
		{"negative steps", sd1, Options{Sampler: Euler}, -3},
		{"more steps than training timesteps", sd1, Options{Sampler: DDIM}, 1001},
		{"unknown sampler", sd1, Options{Sampler: Sampler(len(samplerNames))}, 10},
		{"unknown sigma schedule", sd1, Options{Sampler: Euler, Sigmas: SigmaSchedule(7)}, 10},
		{"unknown timestep spacing", sd1, Options{Sampler: Euler, Spacing: TimestepSpacing(4)}, 10},
		{"invalid config", Config{StepsOffset: -1}, Options{Sampler: Euler}, 10},
		{"karras with ddim", sd1, Options{Sampler: DDIM, Sigmas: SigmasKarras}, 10},
		{"exponential with lcm", sd1, Options{Sampler: LCM, Sigmas: SigmasExponential}, 4},
		{"eta with euler", sd1, Options{Sampler: Euler, Eta: 0.5}, 10},
		{"negative eta", sd1, Options{Sampler: DDIM, Eta: -0.1}, 10},
		{"eta above 1", sd1, Options{Sampler: DDIM, Eta: 1.5}, 10},
		{"NaN eta", sd1, Options{Sampler: DDIM, Eta: math.NaN()}, 10},
		{"sample prediction with euler_a", Config{PredictionType: PredictSample}, Options{Sampler: EulerAncestral}, 10},
		{"sample prediction with dpm2", Config{PredictionType: PredictSample}, Options{Sampler: DPM2}, 10},
		{"sample prediction with pndm", Config{PredictionType: PredictSample}, Options{Sampler: PNDM}, 10},
		{"zero SNR with pndm", withRescale(sd1), Options{Sampler: PNDM}, 10},
		{"zero SNR with heun", withRescale(sd1), Options{Sampler: Heun}, 10},
		{"zero SNR with dpm2", withRescale(sd1), Options{Sampler: DPM2}, 10},
		{"zero SNR with lms", withRescale(sd1), Options{Sampler: LMS}, 10},
		{"pndm warm-up with 3 steps", Config{SkipPRKSteps: boolPtr(false)}, Options{Sampler: PNDM}, 3},
		{"lcm beyond original steps", sd1, Options{Sampler: LCM}, 51},
		{"lcm original steps beyond T", Config{OriginalInferenceSteps: 2000}, Options{Sampler: LCM}, 4},
		{"ddim timestep past T", sd1, Options{Sampler: DDIM}, 1000},
		{"dpm++ cosine karras repeats 999", Config{BetaSchedule: BetaCosine}, Options{Sampler: DPMPP2M, Sigmas: SigmasKarras}, 10},
		{"unipc cosine karras repeats 999", Config{BetaSchedule: BetaCosine}, Options{Sampler: UniPC, Sigmas: SigmasKarras}, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg, tt.opts, tt.steps)
			assert.Error(t, err)
			assert.Nil(t, s)
		})
	}
}

func TestNewAccepts(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		opts  Options
		steps int
	}{
		{"one step", sd1, Options{Sampler: DPM2}, 1},
		{"all training steps", Config{}, Options{Sampler: Euler}, 1000},
		{"ddim eta 1", sd1, Options{Sampler: DDIM, Eta: 1}, 10},
		{"pndm without warm-up, one step", DefaultConfig(), Options{Sampler: PNDM}, 1},
		{"pndm warm-up with 4 steps", Config{}, Options{Sampler: PNDM}, 4},
		{"euler past T clamps like numpy.interp", sd1, Options{Sampler: Euler}, 1000},
		{"sigmoid betas with euler", Config{BetaSchedule: BetaSigmoid}, Options{Sampler: Euler}, 10},
		{"sample prediction with heun", Config{PredictionType: PredictSample}, Options{Sampler: Heun}, 10},
		{"karras with euler_a", sd1, Options{Sampler: EulerAncestral, Sigmas: SigmasKarras}, 10},
		{"exponential with dpmpp_2s_a", sd1, Options{Sampler: DPMPP2SAncestral, Sigmas: SigmasExponential}, 10},
		{"cosine karras with euler", Config{BetaSchedule: BetaCosine}, Options{Sampler: Euler, Sigmas: SigmasKarras}, 10},
		{"cosine with dpm++", Config{BetaSchedule: BetaCosine}, Options{Sampler: DPMPP2M}, 10},
		{"zero SNR with dpmpp_2s_a", withRescale(sd1), Options{Sampler: DPMPP2SAncestral}, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg, tt.opts, tt.steps)
			require.NoError(t, err)
			assert.NotEmpty(t, s.Timesteps())
		})
	}
}

// TestTimestepLayout checks the number of model calls and the shape of the
// timesteps of every sampler, with each sigma schedule where allowed.
func TestTimestepLayout(t *testing.T) {
	const steps = 7
	calls := map[Sampler]int{
		Heun: 2*steps - 1, DPM2: 2*steps - 1, DPMPP2SAncestral: 2*steps - 1, PNDM: steps + 1,
	}
	for _, smp := range allSamplers {
		for _, sig := range []SigmaSchedule{SigmasDefault, SigmasKarras, SigmasExponential} {
			if !smp.usesSigmas() && sig != SigmasDefault {
				continue
			}
			t.Run(smp.String()+"/"+sig.String(), func(t *testing.T) {
				s, err := New(DefaultConfig(), Options{Sampler: smp, Sigmas: sig}, steps)
				require.NoError(t, err)
				ts := s.Timesteps()
				want, ok := calls[smp]
				if !ok {
					want = steps
				}
				require.Len(t, ts, want)
				for i := 1; i < len(ts); i++ {
					// DPM++ 2S a's midpoint equals the next step's σ up
					// to rounding, hence the slack.
					assert.LessOrEqual(t, ts[i], ts[i-1]+1e-4, "non-increasing timesteps")
				}
				assert.GreaterOrEqual(t, ts[len(ts)-1], 0.0)
				assert.Less(t, ts[0], 1000.0)
				if sig := s.Sigmas(); sig != nil {
					assert.Zero(t, sig[len(sig)-1])
					assert.Greater(t, sig[0], 0.0)
				}
				ts[0] = -5
				assert.NotEqual(t, -5.0, s.Timesteps()[0], "Timesteps returns a copy")
			})
		}
	}
}

func TestTrailingSpacingExtraPoint(t *testing.T) {
	// numpy's arange(1000, 0, -1000/61) has 62 points; the schedule keeps 61.
	s, err := New(Config{TimestepSpacing: SpacingTrailing}, Options{Sampler: DDIM}, 61)
	require.NoError(t, err)
	ts := s.Timesteps()
	require.Len(t, ts, 61)
	assert.Equal(t, 999.0, ts[0])
	assert.Equal(t, 15.0, ts[60], "round(1000 − 60·1000/61) − 1")
}

func TestSigmasOption(t *testing.T) {
	// DPM++ 2M Karras through Options equals the config flag.
	viaOpts, err := New(sd1, Options{Sampler: DPMPP2M, Sigmas: SigmasKarras}, 20)
	require.NoError(t, err)
	cfg := sd1
	cfg.UseKarrasSigmas = true
	viaCfg, err := New(cfg, Options{Sampler: DPMPP2M}, 20)
	require.NoError(t, err)
	assert.Equal(t, viaCfg.Timesteps(), viaOpts.Timesteps())
	assert.Equal(t, viaCfg.Sigmas(), viaOpts.Sigmas())
	plain, err := New(sd1, Options{Sampler: DPMPP2M}, 20)
	require.NoError(t, err)
	assert.NotEqual(t, plain.Sigmas(), viaOpts.Sigmas())

	// Options.Sigmas overrides the config; Euler ancestral ignores the
	// config flag, as EulerAncestralDiscreteScheduler has none.
	exp, err := New(cfg, Options{Sampler: DPMPP2M, Sigmas: SigmasExponential}, 20)
	require.NoError(t, err)
	assert.NotEqual(t, viaCfg.Sigmas(), exp.Sigmas())
	ea, err := New(cfg, Options{Sampler: EulerAncestral}, 20)
	require.NoError(t, err)
	eaPlain, err := New(sd1, Options{Sampler: EulerAncestral}, 20)
	require.NoError(t, err)
	assert.Equal(t, eaPlain.Sigmas(), ea.Sigmas())

	// Karras and exponential schedules span the same sigmas.
	k, err := New(sd1, Options{Sampler: Euler, Sigmas: SigmasKarras}, 20)
	require.NoError(t, err)
	e, err := New(sd1, Options{Sampler: Euler, Sigmas: SigmasExponential}, 20)
	require.NoError(t, err)
	ks, es := k.Sigmas(), e.Sigmas()
	assert.InDelta(t, ks[0], es[0], 1e-6*ks[0])
	assert.InDelta(t, ks[19], es[19], 1e-6*ks[19])
	// Exponential: constant ratio between consecutive sigmas.
	assert.InDelta(t, es[1]/es[0], es[11]/es[10], 1e-5)
}

func TestStepErrors(t *testing.T) {
	x := gaussian(4, 8)
	newS := func(smp Sampler) Scheduler {
		s, err := New(sd1, Options{Sampler: smp}, 10)
		require.NoError(t, err)
		return s
	}

	s := newS(Euler)
	_, err := s.Step(x, 10, x, nil)
	assert.Error(t, err, "index past the end")
	_, err = s.Step(x, -1, x, nil)
	assert.Error(t, err, "negative index")
	_, err = s.Step(x[:4], 0, x, nil)
	assert.Error(t, err, "length mismatch")
	_, err = s.Step(x, 3, x, nil)
	require.NoError(t, err, "a run may start anywhere")
	_, err = s.Step(x, 3, x, nil)
	assert.Error(t, err, "repeated index")
	_, err = s.Step(x, 5, x, nil)
	assert.Error(t, err, "skipped index")
	_, err = s.Step(x, 4, x, nil)
	assert.NoError(t, err)

	for _, smp := range []Sampler{Heun, DPM2, DPMPP2SAncestral} {
		_, err = newS(smp).Step(x, 1, x, &countingNoise{})
		assert.Error(t, err, "%v cannot start with a second call", smp)
	}

	for _, smp := range []Sampler{DDPM, EulerAncestral, LCM} {
		_, err = newS(smp).Step(x, 0, x, nil)
		assert.Error(t, err, "%v needs noise", smp)
	}
	ddim, err := New(sd1, Options{Sampler: DDIM, Eta: 0.3}, 10)
	require.NoError(t, err)
	_, err = ddim.Step(x, 0, x, nil)
	assert.Error(t, err, "ddim with eta needs noise")
	sa := newS(DPMPP2SAncestral)
	_, err = sa.Step(x, 0, x, nil)
	require.NoError(t, err, "the first call of a 2S step is deterministic")
	_, err = sa.Step(x, 1, x, nil)
	assert.Error(t, err, "the second adds noise")

	assert.Panics(t, func() { s.ScaleModelInput(x, 10) })
	assert.Panics(t, func() { s.AddNoise(x, x, -1) })
	assert.Panics(t, func() { s.AddNoise(x, x[:2], 0) })
}

// TestNoiseDraws checks how often each sampler draws noise in a full run,
// which must match diffusers for seeded generators to reproduce its images.
func TestNoiseDraws(t *testing.T) {
	linspace := Config{BetaSchedule: BetaScaledLinear, BetaStart: 0.00085, BetaEnd: 0.012, TimestepSpacing: SpacingLinspace}
	tests := []struct {
		name  string
		cfg   Config
		opts  Options
		steps int
		draws int
	}{
		{"ddpm, every step with t > 0", linspace, Options{Sampler: DDPM}, 10, 9},
		{"ddpm, leading ends at t = 1", sd1, Options{Sampler: DDPM}, 10, 10},
		{"ddim eta 0", sd1, Options{Sampler: DDIM}, 10, 0},
		{"ddim eta 0.5", sd1, Options{Sampler: DDIM, Eta: 0.5}, 10, 10},
		{"euler_a, every step", sd1, Options{Sampler: EulerAncestral}, 10, 10},
		{"dpmpp_2s_a, all but the last", sd1, Options{Sampler: DPMPP2SAncestral}, 10, 9},
		{"lcm, all but the last", sd1, Options{Sampler: LCM}, 4, 3},
		{"euler", sd1, Options{Sampler: Euler}, 10, 0},
		{"unipc", sd1, Options{Sampler: UniPC}, 10, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg, tt.opts, tt.steps)
			require.NoError(t, err)
			noise := &countingNoise{value: 0.5}
			x := gaussian(5, 16)
			for i := range s.Timesteps() {
				x, err = s.Step(scaled(x, 0.1), i, x, noise)
				require.NoError(t, err)
			}
			assert.Equal(t, tt.draws, noise.calls)
			for _, v := range x {
				require.False(t, math.IsNaN(float64(v)) || math.IsInf(float64(v), 0))
			}
		})
	}
}

// TestOracleDenoiser runs samplers with a model that always predicts the same
// clean sample x0* and with zero noise. The probability flow ODE is then
// x = x0* + c·σ (x/α = x0* + c·σ for the samplers working on α-scaled
// samples), which every deterministic sampler here integrates exactly, so
// before the last step the distance to x0* must have shrunk by the ratio of
// the noise levels. With zero noise DPM++ 2S ancestral only steps to σ_down
// = σ_k+1²/σ_k, so its distance shrinks by Π (σ_k+1/σ_k)². This checks DPM++
// 2S ancestral, which diffusers has no class for, the same way as the
// others.
func TestOracleDenoiser(t *testing.T) {
	target := gaussian(6, 32)
	clampAll(target, 1)
	cfg := sd1
	cfg.PredictionType = PredictSample
	cfg.ClipSample = boolPtr(false)
	train, err := NewTrainingSchedule(cfg)
	require.NoError(t, err)
	vp := func(sigma float64) (alpha, sigmaT float64) {
		alpha = 1 / math.Sqrt(sigma*sigma+1)
		return alpha, sigma * alpha
	}
	for _, smp := range []Sampler{DDIM, Euler, Heun, LMS, DPMPP2M, DPMPP2SAncestral, UniPC} {
		for _, sig := range []SigmaSchedule{SigmasDefault, SigmasKarras, SigmasExponential} {
			if !smp.usesSigmas() && sig != SigmasDefault {
				continue
			}
			t.Run(smp.String()+"/"+sig.String(), func(t *testing.T) {
				s, err := New(cfg, Options{Sampler: smp, Sigmas: sig}, 12)
				require.NoError(t, err)
				ts, sigmas := s.Timesteps(), s.Sigmas()
				last := len(ts) - 1
				// Signal scale a and deviation ratio r at the first and
				// the last entry.
				var a0, aLast, ratio float64
				switch smp {
				case DDIM:
					ac := train.AlphasCumprod()
					acFirst, acLast := float64(ac[int(ts[0])]), float64(ac[int(ts[last])])
					a0, aLast = math.Sqrt(acFirst), math.Sqrt(acLast)
					ratio = math.Sqrt(1-acLast) / math.Sqrt(1-acFirst)
				case DPMPP2M, UniPC:
					var s0, sLast float64
					a0, s0 = vp(sigmas[0])
					aLast, sLast = vp(sigmas[last])
					ratio = sLast / s0
				case DPMPP2SAncestral:
					a0, aLast, ratio = 1, 1, 1
					for k := 0; k+2 < len(sigmas); k++ {
						ratio *= sigmas[k+1] * sigmas[k+1] / (sigmas[k] * sigmas[k])
					}
				default:
					a0, aLast, ratio = 1, 1, sigmas[last]/sigmas[0]
				}
				x := scaled(gaussian(7, 32), s.InitNoiseSigma())
				want := make([]float64, len(x))
				for j := range x {
					want[j] = aLast*float64(target[j]) + ratio*(float64(x[j])-a0*float64(target[j]))
				}
				for i := range ts {
					if i == last {
						assert.InDeltaSlice(t, want, toFloat64(x), 2e-5*s.InitNoiseSigma(), "before the last step")
					}
					x, err = s.Step(target, i, x, &countingNoise{})
					require.NoError(t, err)
				}
				assert.InDeltaSlice(t, toFloat64(target), toFloat64(x), 1e-5)
			})
		}
	}
}

func TestStartIndex(t *testing.T) {
	tests := []struct {
		sampler  Sampler
		steps    int
		strength float64
		want     int
	}{
		{Euler, 10, 1, 0},
		{Euler, 10, 0.75, 3},  // int(7.5) = 7 steps run
		{Euler, 10, 0.3, 7},   // 10·0.3 = 3.0000000000000004
		{Euler, 10, 0.05, 10}, // no step runs
		{Euler, 10, 0, 10},
		{Euler, 10, -1, 10},
		{Euler, 10, 2, 0},
		{Euler, 10, math.NaN(), 10},
		{Heun, 10, 0.75, 6},
		{DPM2, 10, 0.5, 10},
		{DPMPP2SAncestral, 10, 0.5, 10},
		{Heun, 10, 0, 19}, // clamped to len(Timesteps())
		{PNDM, 10, 0.5, 5},
		{LCM, 4, 0.5, 2},
	}
	for _, tt := range tests {
		s, err := New(DefaultConfig(), Options{Sampler: tt.sampler}, tt.steps)
		require.NoError(t, err)
		assert.Equal(t, tt.want, s.StartIndex(tt.strength), "%v %d steps strength %v", tt.sampler, tt.steps, tt.strength)
	}
}

// TestResume checks that a scheduler started at a step boundary (img2img)
// continues a run exactly for the one-step methods, whose state does not
// outlive a step.
func TestResume(t *testing.T) {
	model := func(x []float32, t float64) []float32 {
		out := make([]float32, len(x))
		for j, v := range x {
			out[j] = float32(0.2*float64(v) + 0.5*math.Sin(float64(j)+t/300))
		}
		return out
	}
	for _, smp := range []Sampler{Euler, EulerAncestral, Heun, DPM2, DPMPP2SAncestral, DDIM, LCM} {
		t.Run(smp.String(), func(t *testing.T) {
			steps := 8
			if smp == LCM {
				steps = 4
			}
			full, err := New(sd1, Options{Sampler: smp}, steps)
			require.NoError(t, err)
			start := full.StartIndex(0.5)
			require.Positive(t, start)
			x := scaled(gaussian(8, 16), full.InitNoiseSigma())
			var atStart []float32
			for i, ts := range full.Timesteps() {
				if i == start {
					atStart = x
				}
				x, err = full.Step(model(full.ScaleModelInput(x, i), ts), i, x, &countingNoise{value: 0.1})
				require.NoError(t, err)
			}
			part, err := New(sd1, Options{Sampler: smp}, steps)
			require.NoError(t, err)
			y := atStart
			for i, ts := range part.Timesteps()[start:] {
				i += start
				y, err = part.Step(model(part.ScaleModelInput(y, i), ts), i, y, &countingNoise{value: 0.1})
				require.NoError(t, err)
			}
			assert.Equal(t, x, y)
		})
	}
}

func TestAddNoiseAndScale(t *testing.T) {
	x0, noise := gaussian(9, 16), gaussian(10, 16)
	const i = 3

	ddim, err := New(sd1, Options{Sampler: DDIM}, 10)
	require.NoError(t, err)
	train, err := NewTrainingSchedule(sd1)
	require.NoError(t, err)
	assert.Equal(t, train.AddNoise(x0, noise, int(ddim.Timesteps()[i])), ddim.AddNoise(x0, noise, i))
	in := ddim.ScaleModelInput(x0, i)
	assert.Equal(t, x0, in)
	in[0]++
	assert.NotEqual(t, x0[0], in[0], "ScaleModelInput returns a new slice")

	euler, err := New(sd1, Options{Sampler: Euler}, 10)
	require.NoError(t, err)
	sigma := euler.Sigmas()[i]
	noisy := euler.AddNoise(x0, noise, i)
	scaledIn := euler.ScaleModelInput(x0, i)
	for j := range x0 {
		assert.InDelta(t, float64(x0[j])+sigma*float64(noise[j]), float64(noisy[j]), 1e-5)
		assert.InDelta(t, float64(x0[j])/math.Sqrt(sigma*sigma+1), float64(scaledIn[j]), 1e-6)
	}

	dpm, err := New(sd1, Options{Sampler: DPMPP2M}, 10)
	require.NoError(t, err)
	sigma = dpm.Sigmas()[i]
	alpha := 1 / math.Sqrt(sigma*sigma+1)
	noisy = dpm.AddNoise(x0, noise, i)
	for j := range x0 {
		assert.InDelta(t, alpha*float64(x0[j])+alpha*sigma*float64(noise[j]), float64(noisy[j]), 1e-5)
	}
	assert.Equal(t, 1.0, dpm.InitNoiseSigma())

	// DPM2 scales its second call by the midpoint sigma, between the two.
	dpm2, err := New(sd1, Options{Sampler: DPM2}, 10)
	require.NoError(t, err)
	sig := dpm2.Sigmas()
	mid := float64(x0[0]) / float64(dpm2.ScaleModelInput(x0, 1)[0])
	midSigma := math.Sqrt(mid*mid - 1)
	assert.InDelta(t, math.Sqrt(sig[0]*sig[1]), midSigma, 1e-4*midSigma)
	assert.True(t, slices.IsSorted([]float64{sig[1], midSigma, sig[0]}))
}
