"""Noise schedule, training targets and two samplers (DDIM, Euler) with classifier-free guidance.

The schedule follows diffusers' scheduler_config.json semantics (beta_schedule, beta_start/end,
num_train_timesteps, prediction_type, timestep_spacing="leading", steps_offset), so a folder
exported with the training schedule samples the same way in diffusers and in the gosd runtime.
"""

import torch


def alphas_cumprod(sched):
    """alpha_bar_t for t = 0..T-1 (float64 on CPU). sched: a scheduler_config.json-style dict."""
    n = sched.get("num_train_timesteps", 1000)
    kind = sched.get("beta_schedule", "scaled_linear")
    b0, b1 = sched.get("beta_start", 0.00085), sched.get("beta_end", 0.012)
    if kind == "scaled_linear":
        betas = torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float32) ** 2
    elif kind == "linear":
        betas = torch.linspace(b0, b1, n, dtype=torch.float32)
    else:
        raise NotImplementedError(f"beta_schedule {kind}")
    return torch.cumprod(1.0 - betas.double(), dim=0)


def training_target(sched, latents, noise, ab):
    """Noisy input and regression target for the UNet. ab: alpha_bar_t broadcastable to latents."""
    noisy = ab.sqrt() * latents + (1 - ab).sqrt() * noise
    kind = sched.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return noisy, noise
    if kind == "v_prediction":
        return noisy, ab.sqrt() * noise - (1 - ab).sqrt() * latents
    raise NotImplementedError(f"prediction_type {kind}")


def leading_timesteps(sched, steps):
    """diffusers "leading" spacing: (0, r, 2r, ...) reversed, plus steps_offset; r = T // steps."""
    n = sched.get("num_train_timesteps", 1000)
    ratio = n // steps
    ts = (torch.arange(steps) * ratio).flip(0) + sched.get("steps_offset", 1)
    return ts.long(), ratio


def _x0_eps(kind, x, out, ab):
    if kind == "epsilon":
        return (x - (1 - ab).sqrt() * out) / ab.sqrt(), out
    if kind == "v_prediction":
        return ab.sqrt() * x - (1 - ab).sqrt() * out, ab.sqrt() * out + (1 - ab).sqrt() * x
    raise NotImplementedError(kind)


@torch.no_grad()
def sample(unet, context, uncond, sched, steps=30, guidance=5.0, sampler="ddim", generator=None, shape=None):
    """Generates latents (unscaled by the VAE factor: divide by scaling_factor before decoding).

    context, uncond: (B, 77, D) text-encoder outputs for the prompts and the empty prompt.
    shape: (C, H, W) of the latents. Returns (B, C, H, W) float32."""
    device = context.device
    b = context.shape[0]
    kind = sched.get("prediction_type", "epsilon")
    ac = alphas_cumprod(sched).to(device)
    ts, ratio = leading_timesteps(sched, steps)
    x = torch.randn((b,) + tuple(shape), generator=generator, device=device if generator is None else generator.device)
    x = x.to(device).double()
    ctx = torch.cat([uncond, context])

    def model(x_in, t):
        inp = torch.cat([x_in, x_in]).float()
        out = unet(inp, torch.full((2 * b,), float(t), device=device), ctx).double()
        u, c = out.chunk(2)
        return u + guidance * (c - u)

    if sampler == "ddim":  # eta = 0, set_alpha_to_one = False
        for t in ts.tolist():
            ab = ac[t]
            prev = t - ratio
            ab_prev = ac[prev] if prev >= 0 else ac[0]
            x0, eps = _x0_eps(kind, x, model(x, t), ab)
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    elif sampler == "euler":  # EulerDiscreteScheduler on the same timesteps, sigma = sqrt((1 - ab) / ab)
        sigmas = ((1 - ac[ts]) / ac[ts]).sqrt().tolist() + [0.0]
        x = x * (sigmas[0] ** 2 + 1) ** 0.5
        for i, t in enumerate(ts.tolist()):
            s = sigmas[i]
            out = model(x / (s**2 + 1) ** 0.5, t)
            if kind == "epsilon":
                x0 = x - s * out
            else:
                x0 = out * (-s / (s**2 + 1) ** 0.5) + x / (s**2 + 1)
            x = x + (x - x0) / s * (sigmas[i + 1] - s)
    else:
        raise ValueError(f"unknown sampler {sampler!r} (ddim, euler)")
    return x.float()


@torch.no_grad()
def decode(vae, latents, scaling_factor):
    """Latents from sample() -> images (B, 3, H, W) in [0, 1]."""
    return (vae.decode(latents / scaling_factor) / 2 + 0.5).clamp(0, 1)


def to_uint8(images):
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8 numpy array."""
    import numpy as np

    return (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def to_grid(images, cols):
    """(N, 3, H, W) in [0, 1] -> uint8 HWC grid (numpy), white padding to fill the last row."""
    import numpy as np

    n, _, h, w = images.shape
    rows = (n + cols - 1) // cols
    grid = np.full((rows * h, cols * w, 3), 255, dtype=np.uint8)
    arr = to_uint8(images)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = arr[i]
    return grid
