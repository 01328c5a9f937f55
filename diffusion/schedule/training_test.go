package schedule

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// gaussian returns n deterministic pseudo-random normal samples.
func gaussian(seed uint64, n int) []float32 {
	r := rand.New(rand.NewPCG(seed, 1))
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(r.NormFloat64())
	}
	return out
}

func TestTrainingScheduleBetas(t *testing.T) {
	sd := Config{BetaStart: 0.00085, BetaEnd: 0.012}
	tests := []struct {
		name  string
		cfg   Config
		check func(t *testing.T, betas, ac []float32)
	}{
		{"linear", Config{BetaSchedule: BetaLinear}, func(t *testing.T, betas, _ []float32) {
			assert.Equal(t, float32(0.0001), betas[0])
			assert.Equal(t, float32(0.02), betas[999])
			assert.InDelta(t, (0.0001+0.02)/2, float64(betas[499]+betas[500])/2, 1e-8)
		}},
		{"scaled_linear", withBetas(sd, BetaScaledLinear), func(t *testing.T, betas, _ []float32) {
			assert.InDelta(t, 0.00085, float64(betas[0]), 1e-9)
			assert.InDelta(t, 0.012, float64(betas[999]), 1e-9)
			mid := (math.Sqrt(0.00085) + math.Sqrt(0.012)) / 2
			assert.InDelta(t, mid*mid, float64(betas[500]+betas[499])/2, 1e-6)
		}},
		{"quadratic is scaled_linear", withBetas(sd, BetaQuadratic), func(t *testing.T, betas, _ []float32) {
			ref, err := NewTrainingSchedule(withBetas(sd, BetaScaledLinear))
			require.NoError(t, err)
			assert.Equal(t, ref.Betas(), betas)
		}},
		{"cosine", Config{BetaSchedule: BetaCosine}, func(t *testing.T, betas, ac []float32) {
			assert.Equal(t, float32(0.999), betas[999], "capped")
			for i := 1; i < len(ac); i++ {
				require.Less(t, ac[i], ac[i-1])
			}
			// ᾱ after 500 steps is alpha_bar(0.5)/alpha_bar(0).
			want := math.Pow(math.Cos(0.508/1.008*math.Pi/2)/math.Cos(0.008/1.008*math.Pi/2), 2)
			assert.InDelta(t, want, float64(ac[499]), 1e-6)
		}},
		{"sigmoid", Config{BetaSchedule: BetaSigmoid, BetaStart: 0.001, BetaEnd: 0.01}, func(t *testing.T, betas, _ []float32) {
			for i := 1; i < len(betas); i++ {
				require.GreaterOrEqual(t, betas[i], betas[i-1])
			}
			sig := func(x float64) float64 { return 1 / (1 + math.Exp(-x)) }
			assert.InDelta(t, 0.001+0.009*sig(-6), float64(betas[0]), 1e-9)
			assert.InDelta(t, 0.001+0.009*sig(6), float64(betas[999]), 1e-9)
		}},
		{"trained", Config{NumTrainTimesteps: 3, TrainedBetas: []float64{0.1, 0.2, 0.5}}, func(t *testing.T, betas, ac []float32) {
			assert.Equal(t, []float32{0.1, 0.2, 0.5}, betas)
			assert.InDeltaSlice(t, []float64{0.9, 0.72, 0.36}, toFloat64(ac), 1e-7)
		}},
		{"zero terminal SNR", withRescale(withBetas(sd, BetaScaledLinear)), func(t *testing.T, _, ac []float32) {
			plain, err := NewTrainingSchedule(withBetas(sd, BetaScaledLinear))
			require.NoError(t, err)
			assert.Zero(t, ac[999])
			assert.InDelta(t, float64(plain.AlphasCumprod()[0]), float64(ac[0]), 1e-7, "first ᾱ kept")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewTrainingSchedule(tt.cfg)
			require.NoError(t, err)
			tt.check(t, s.Betas(), s.AlphasCumprod())
		})
	}
}

func withBetas(c Config, b BetaSchedule) Config { c.BetaSchedule = b; return c }
func withRescale(c Config) Config               { c.RescaleBetasZeroSNR = true; return c }

func TestTrainingScheduleTargets(t *testing.T) {
	x0, noise := gaussian(1, 64), gaussian(2, 64)
	for _, pred := range []PredictionType{PredictEpsilon, PredictV, PredictSample} {
		t.Run(pred.String(), func(t *testing.T) {
			s, err := NewTrainingSchedule(Config{BetaSchedule: BetaScaledLinear, BetaStart: 0.00085, BetaEnd: 0.012, PredictionType: pred})
			require.NoError(t, err)
			assert.Equal(t, pred, s.Prediction())
			assert.Equal(t, 1000, s.NumTimesteps())
			for _, ts := range []int{0, 250, 999} {
				a := float64(s.AlphasCumprod()[ts])
				xt := s.AddNoise(x0, noise, ts)
				target := s.Target(x0, noise, ts)
				back := s.PredictOriginal(target, xt, ts)
				for j := range x0 {
					assert.InDelta(t, math.Sqrt(a)*float64(x0[j])+math.Sqrt(1-a)*float64(noise[j]), float64(xt[j]), 1e-5)
					var want float64
					switch pred {
					case PredictEpsilon:
						want = float64(noise[j])
					case PredictV:
						want = math.Sqrt(a)*float64(noise[j]) - math.Sqrt(1-a)*float64(x0[j])
					case PredictSample:
						want = float64(x0[j])
					}
					assert.InDelta(t, want, float64(target[j]), 1e-5)
					// ε → x0 divides by √ᾱ, which amplifies rounding at t = 999.
					assert.InDelta(t, float64(x0[j]), float64(back[j]), 1e-5/math.Sqrt(a))
				}
			}
		})
	}
}

func TestTrainingScheduleMisuse(t *testing.T) {
	_, err := NewTrainingSchedule(Config{StepsOffset: -1})
	assert.Error(t, err)

	s, err := NewTrainingSchedule(Config{})
	require.NoError(t, err)
	x := gaussian(3, 4)
	assert.Panics(t, func() { s.AddNoise(x, x, 1000) })
	assert.Panics(t, func() { s.AddNoise(x, x, -1) })
	assert.Panics(t, func() { s.Target(x, x[:3], 10) })
	assert.Panics(t, func() { s.PredictOriginal(x, x[:2], 10) })

	// The accessors return copies.
	s.Betas()[0] = 1
	s.AlphasCumprod()[0] = 1
	assert.Equal(t, float32(0.0001), s.Betas()[0])
	assert.Equal(t, float32(0.9999), s.AlphasCumprod()[0])
}
