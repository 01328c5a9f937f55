package schedule

// StepOf returns the sampling step (0-based, of the steps New was given) that model call
// i belongs to: second-order samplers make two calls a step (the last step one), and
// samplers with warm-up calls (PNDM) count them in the first step. Progress reporting
// counts steps with it, so that 20 Heun steps read 20, not 39.
func (s *scheduler) StepOf(i int) int {
	if s.order == 2 {
		return i / 2
	}
	return max(0, i-(len(s.timesteps)-s.steps))
}
