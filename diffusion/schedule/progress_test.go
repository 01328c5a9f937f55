package schedule

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every model call maps to a step, in order, from the first step to the last, so that a
// progress bar ends at the number of steps asked for (not at the number of model calls).
func TestStepOf(t *testing.T) {
	plms, prk := sd1, sd1
	plms.SkipPRKSteps, prk.SkipPRKSteps = boolPtr(true), boolPtr(false)
	for _, steps := range []int{1, 4, 20} {
		for _, sampler := range allSamplers {
			s, err := New(plms, Options{Sampler: sampler}, steps)
			require.NoError(t, err, "%v %d", sampler, steps)
			n := len(s.Timesteps())
			assert.Equal(t, 0, s.StepOf(0), "%v", sampler)
			assert.Equal(t, steps-1, s.StepOf(n-1), "%v, %d calls for %d steps", sampler, n, steps)
			for i := 1; i < n; i++ {
				d := s.StepOf(i) - s.StepOf(i-1)
				assert.True(t, d == 0 || d == 1, "%v: call %d moves %d steps", sampler, i, d)
			}
		}
	}
	s, err := New(sd1, Options{Sampler: Heun}, 20)
	require.NoError(t, err)
	assert.Len(t, s.Timesteps(), 39)
	assert.Equal(t, []int{0, 0, 1, 1, 2}, []int{s.StepOf(0), s.StepOf(1), s.StepOf(2), s.StepOf(3), s.StepOf(4)})
	s, err = New(prk, Options{Sampler: PNDM}, 20)
	require.NoError(t, err)
	assert.Equal(t, 19, s.StepOf(len(s.Timesteps())-1), "Runge-Kutta warm-up calls count in the first step")
}
