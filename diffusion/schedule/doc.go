// Package schedule implements the noise schedules and samplers of Stable
// Diffusion in pure Go, reproducing Hugging Face diffusers (0.40) to float32
// precision.
//
// # Model
//
// A model is trained on the forward process q(x_t | x_0) of a
// TrainingSchedule: x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε for integer timesteps
// t in [0, T), with ᾱ_t the running product of 1−β_t. Config describes β
// (diffusers' scheduler_config.json) and how inference timesteps are picked.
//
// Sampling runs that process backwards. A Scheduler is stateful and mirrors
// diffusers' loop, one model call per entry of Timesteps():
//
//	s, err := schedule.New(cfg, schedule.Options{Sampler: schedule.Euler}, 30)
//	// x: unit normal noise times s.InitNoiseSigma()
//	for i, t := range s.Timesteps() {
//		out := unet(s.ScaleModelInput(x, i), t) // ε, v or x0, after guidance
//		x, err = s.Step(out, i, x, rng)
//	}
//
// For img2img, start at i0 := s.StartIndex(strength) from
// s.AddNoise(latents, noise, i0). A Scheduler serves one loop in one
// goroutine; New is cheap, so make one per image.
//
// # Samplers
//
// Each sampler reproduces one diffusers scheduler class with that class's
// defaults; Config fields that a file leaves unset take the class's default
// as diffusers does (see Config).
//
//   - ddpm (DDPMScheduler): ancestral sampling of Ho et al. 2020 with the
//     fixed_small posterior variance; draws noise at every step but t = 0.
//   - ddim (DDIMScheduler): Song et al. 2020; deterministic at Eta 0, with
//     Eta·σ_DDPM noise otherwise.
//   - pndm (PNDMScheduler): pseudo linear multistep (Liu et al. 2022),
//     optionally after 12 Runge-Kutta warm-up calls (skip_prk_steps false).
//   - euler (EulerDiscreteScheduler): Euler steps of the probability flow
//     ODE in σ (Karras et al. 2022).
//   - euler_a (EulerAncestralDiscreteScheduler): Euler to σ_down plus fresh
//     noise of std σ_up at every step.
//   - heun (HeunDiscreteScheduler): second order, two model calls per step
//     except the last.
//   - dpm2 (KDPM2DiscreteScheduler): second order with the midpoint at the
//     geometric mean of the two sigmas, two calls per step except the last.
//   - dpmpp_2m (DPMSolverMultistepScheduler): DPM-Solver++(2M), Lu et al.
//     2022, data prediction, midpoint solver, first-order last step.
//     DPM++ 2M Karras is Options{Sampler: DPMPP2M, Sigmas: SigmasKarras}.
//   - dpmpp_2s_a: DPM-Solver++(2S) ancestral. diffusers has no class for it;
//     it follows k-diffusion's sample_dpmpp_2s_ancestral (η = 1) on the
//     sigma schedule EulerAncestralDiscreteScheduler uses (or Euler's Karras
//     or exponential one), with two calls per step except the last and
//     noise drawn once per step except the last.
//   - lms (LMSDiscreteScheduler): linear multistep of order up to 4.
//   - unipc (UniPCMultistepScheduler): UniPC with bh2, order 2, predict_x0.
//   - lcm (LCMScheduler): latent consistency models; draws noise at every
//     step but the last.
//
// The sigma-based samplers (all but ddpm, ddim, pndm and lcm) accept a
// SigmaSchedule: default, karras or exponential, as diffusers'
// use_karras_sigmas and use_exponential_sigmas. euler_a and dpmpp_2s_a,
// whose diffusers class has no such option, build them as
// EulerDiscreteScheduler does.
//
// # Exactness
//
// Tables (β, ᾱ, σ, timesteps) are computed with the float32 and float64
// roundings of torch and numpy, so they match diffusers bit for bit or to an
// ulp; step arithmetic rounds to float32 where diffusers' results depend on
// it. Against the conformance kit's diffusers rollouts the samples agree to
// about 1e-6 of their magnitude. Stochastic samplers read noise through the
// Noise interface in the order diffusers draws it, so a torch-compatible
// generator can reproduce diffusers' images.
//
// Deliberate differences from diffusers, where it would fail or silently
// compute something else: sigmoid and quadratic betas are accepted by every
// sampler (diffusers implements sigmoid only in DDPMScheduler);
// rescale_betas_zero_snr is an error for the samplers whose class ignores it
// (pndm, heun, dpm2, lms); trailing spacing never adds the extra timestep −1
// that numpy's float arange gives diffusers for some step counts (61, 103,
// ... of 1000). DPM++ 2M and UniPC reject a schedule whose first integer
// timestep repeats, on which diffusers steps past the end of its sigmas and
// fails: Karras sigmas on the cosine schedule or, beyond 20 steps, on a
// zero-terminal-SNR one, where the largest sigmas map to one timestep. Like
// diffusers, LMS started mid-schedule (img2img) weighs its single derivative
// with the first coefficient of the full-order method, and PNDM started
// mid-schedule keeps its call-count based warm-up.
//
// Not read from the config (fixed to the diffusers defaults): thresholding,
// variance_type, solver_order, algorithm_type, solver_type,
// lower_order_final, interpolation_type, timestep_type, final_sigmas_type,
// sigma_min/sigma_max and use_beta_sigmas.
package schedule
