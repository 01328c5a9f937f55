#!/usr/bin/env python3
"""Train the bundled demo model: stage 1 the VAE, stage 2 the text encoder and UNet together.

  python3 train.py --run runs/demo                    # whole run (config.json), device auto
  python3 train.py --run runs/demo --resume --max-minutes 9   # in chunks; exits 75 until done
  python3 train.py --run runs/demo --resume --extend --config longer.json   # a finished run, further
  python3 train.py --smoke                            # a few steps of everything on a tiny subset
  python3 train.py --bench 5                          # seconds per step of each stage, synthetic data

Run folder (--run): config.json (the resolved config), vae.pt / latents.pt / unet.pt checkpoints
(model, EMA, optimizer, RNG state, step), loss.csv, samples/*.png, status.json.
export.py turns a finished run into a diffusers folder.

Exit status: 0 done, 75 stopped by --max-minutes (rerun with --resume), 1 error, 2 usage.
"""

import argparse
import contextlib
import csv
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import sampling  # noqa: E402
import sdmodels  # noqa: E402

EXIT_INCOMPLETE = 75
CSV_FIELDS = ["stage", "step", "loss", "l1", "l2", "edge", "kl", "lr", "train_seconds", "samples_per_s"]


class Incomplete(Exception):
    """Raised when the time budget of this invocation is spent (checkpoint already written)."""


# --------------------------------------------------------------------------------------------
# data


class Dataset:
    """The prepared .npz, moved to the training device once (about 50 MB)."""

    def __init__(self, arrays, device, limit=0):
        n = len(arrays["images"]) if not limit else min(limit, len(arrays["images"]))
        self.device = device
        self.n = n
        self.images = torch.from_numpy(np.ascontiguousarray(arrays["images"][:n])).to(device)  # (N, H, W, 3) uint8
        self.weights = torch.from_numpy(arrays["image_weight"][:n].astype(np.float32)).to(device)
        self.offsets = torch.from_numpy(arrays["pair_offsets"][: n + 1].astype(np.int64)).to(device)
        self.pair_captions = torch.from_numpy(arrays["pair_captions"].astype(np.int64)).to(device)
        self.caption_ids = torch.from_numpy(arrays["caption_ids"].astype(np.int64)).to(device)
        self.empty_ids = torch.from_numpy(arrays["empty_ids"].astype(np.int64)).to(device)
        self.heldout = [str(s) for s in arrays["heldout"]] if "heldout" in arrays else []
        self.heldout_ids = torch.from_numpy(arrays["heldout_ids"].astype(np.int64)).to(device) if "heldout" in arrays else None

    @classmethod
    def load(cls, path, device, limit=0):
        if not os.path.isfile(path):
            sys.exit(f"train: dataset {path} not found; run prepare_data.py first (see README.md)")
        with np.load(path) as d:
            arrays = {k: d[k] for k in d.files}
        if "fake_tokenize" in json.loads(str(arrays.get("meta", "{}"))).get("tokenizer_cmd", ""):
            print(f"train: WARNING: {path} was tokenized by the test stand-in; fine for tests, never for the demo model",
                  file=sys.stderr)
        return cls(arrays, device, limit)

    @classmethod
    def synthetic(cls, device, n=512, seed=0):
        """Random images and ids of the real shapes, for --bench."""
        rng = np.random.default_rng(seed)
        ids = np.full((n, 77), 49407, dtype=np.int32)
        ids[:, 0] = 49406
        ids[:, 1:9] = rng.integers(400, 49000, size=(n, 8))
        return cls({
            "images": rng.integers(0, 256, size=(n, 64, 64, 3), dtype=np.uint8),
            "image_weight": np.ones(n, np.float32),
            "pair_offsets": np.arange(n + 1, dtype=np.int32),
            "pair_captions": np.arange(n, dtype=np.int32),
            "caption_ids": ids,
            "empty_ids": np.array([49406] + [49407] * 76, dtype=np.int32),
        }, device)

    def sample_images(self, batch, g):
        return torch.multinomial(self.weights, batch, replacement=True, generator=g)

    def pixels(self, idx):
        """(B, 3, H, W) float32 in [-1, 1]."""
        return self.images[idx].permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    def caption_ids_for(self, idx, g, drop=0.0):
        """One random caption of each image, replaced by the empty prompt with probability drop."""
        start = self.offsets[idx]
        count = self.offsets[idx + 1] - start
        pick = (torch.rand(idx.shape[0], generator=g, device=self.device) * count).long()
        ids = self.caption_ids[self.pair_captions[start + torch.minimum(pick, count - 1)]]
        if drop > 0:
            mask = torch.rand(idx.shape[0], generator=g, device=self.device) < drop
            ids = torch.where(mask[:, None], self.empty_ids[None, :], ids)
        return ids


# --------------------------------------------------------------------------------------------
# helpers


def autocast(device, amp):
    if device.type != "cuda" or amp == "none":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def grad_scaler(device, amp):
    enabled = device.type == "cuda" and amp == "fp16"
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def make_optimizer(models, tc, device):
    decay, no_decay = [], []
    for m in models:
        for name, p in m.named_parameters():
            (no_decay if p.ndim < 2 or "embedding" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": tc.get("weight_decay", 0.0)}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=tc["lr"], betas=(0.9, 0.999), eps=1e-8)
    if device.type == "cuda":
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (TypeError, RuntimeError):
            pass
    return torch.optim.AdamW(groups, **kwargs)


def lr_at(step, tc):
    """Linear warmup, then cosine decay to min_lr_frac * lr at the last step. With
    "restart": {"at": N, "lr": X} the first cosine ends at step N and a second one falls from X
    to the same floor over the remaining steps (how a finished run is extended, --extend)."""
    warm, total, lr = tc.get("warmup", 0), tc["steps"], tc["lr"]
    lo = lr * tc.get("min_lr_frac", 0.0)
    restart = tc.get("restart")
    if restart and step >= restart["at"]:
        p = min(1.0, (step - restart["at"]) / max(1, total - restart["at"]))
        return lo + (restart["lr"] - lo) * 0.5 * (1 + math.cos(math.pi * p))
    if restart:
        total = restart["at"]
    if step < warm:
        return lr * (step + 1) / warm
    p = min(1.0, (step - warm) / max(1, total - warm))
    return lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * p))


class EMA:
    """Float32 exponential moving average of the parameters of several named models."""

    def __init__(self, models):
        self.models = models
        self.params = {f"{k}.{n}": p.detach().float().clone() for k, m in models.items() for n, p in m.named_parameters()}

    @torch.no_grad()
    def update(self, decay):
        live = [p.detach().float() for m in self.models.values() for p in m.parameters()]
        shadow = list(self.params.values())
        torch._foreach_mul_(shadow, decay)
        torch._foreach_add_(shadow, live, alpha=1 - decay)

    def state_dict(self, kind):
        prefix = kind + "."
        return {k[len(prefix):]: v for k, v in self.params.items() if k.startswith(prefix)}

    def load(self, state):
        for k, v in state.items():
            self.params[k].copy_(v)


def save_checkpoint(path, obj):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, device):
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except TypeError:  # torch < 1.13.1 has no weights_only
        return torch.load(path, map_location=device)


class Logger:
    def __init__(self, run, stage, quiet=False):
        self.path = os.path.join(run, "loss.csv")
        self.stage = stage
        self.quiet = quiet
        self.sums = {}
        self.count = 0
        self.t0 = time.time()
        self.samples = 0

    def add(self, batch, **terms):
        for k, v in terms.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1
        self.samples += batch

    def flush(self, step, lr, train_seconds):
        if not self.count:
            return
        row = {"stage": self.stage, "step": step, "lr": f"{lr:.3e}", "train_seconds": f"{train_seconds:.1f}"}
        for k, v in self.sums.items():
            row[k] = f"{v.item() / self.count:.6f}"
        dt = time.time() - self.t0
        row["samples_per_s"] = f"{self.samples / max(dt, 1e-9):.1f}"
        new = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            if new:
                w.writeheader()
            w.writerow(row)
        if not self.quiet:
            terms = " ".join(f"{k}={row[k]}" for k in self.sums)
            print(f"[{self.stage}] step {step} {terms} lr={row['lr']} {row['samples_per_s']} samples/s", file=sys.stderr)
        self.sums, self.count, self.samples, self.t0 = {}, 0, 0, time.time()


# --------------------------------------------------------------------------------------------
# stage 1: VAE


def vae_step(vae, x, tc, g, device, amp):
    """One forward pass and the VAE loss terms (float32 scalars)."""
    if tc.get("hflip"):
        flip = torch.rand(x.shape[0], generator=g, device=device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    with autocast(device, amp):
        rec, mean, logvar = vae(x, generator=g)
    rec = rec.float()
    diff = rec - x
    l1 = diff.abs().mean()
    l2 = diff.pow(2).mean()
    # "Sharpening" without a perceptual network: match horizontal and vertical image gradients.
    edge = (diff[..., :, 1:] - diff[..., :, :-1]).abs().mean() + (diff[..., 1:, :] - diff[..., :-1, :]).abs().mean()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    loss = tc["l1_weight"] * l1 + tc["l2_weight"] * l2 + tc["edge_weight"] * edge + tc["kl_weight"] * kl
    return loss, dict(l1=l1, l2=l2, edge=edge, kl=kl)


def train_vae(cfg, data, run, device, deadline, resume, quiet=False):
    tc = cfg["vae_train"]
    amp = cfg.get("amp", "bf16")
    path = os.path.join(run, "vae.pt")
    torch.manual_seed(cfg["seed"])
    vae = sdmodels.build("vae", cfg["model"]["vae"]).to(device)
    opt = make_optimizer([vae], tc, device)
    scaler = grad_scaler(device, amp)
    g = torch.Generator(device=device)
    g.manual_seed(cfg["seed"] + 1)
    step, seconds = 0, 0.0
    if resume and os.path.exists(path):
        # Loaded on the CPU: load_state_dict moves weights and optimizer state where they belong.
        ck = load_checkpoint(path, "cpu")
        vae.load_state_dict(ck["model"])
        if ck.get("done") and ck["step"] >= tc["steps"]:
            return vae.eval()
        opt.load_state_dict(ck["opt"])
        g.set_state(ck["rng"].cpu())
        step, seconds = ck["step"], ck["train_seconds"]
        print(f"[vae] resuming at step {step}", file=sys.stderr)

    def checkpoint(done):
        save_checkpoint(path, {"model": vae.state_dict(), "opt": opt.state_dict(), "rng": g.get_state(), "step": step,
                               "train_seconds": seconds, "done": done, "config": cfg["model"]["vae"]})

    log = Logger(run, "vae", quiet)
    last_ckpt = time.time()
    vae.train()
    while step < tc["steps"]:
        if deadline.passed():
            checkpoint(False)
            raise Incomplete(f"vae stage at step {step}/{tc['steps']}")
        t0 = time.time()
        lr = lr_at(step, tc)
        for group in opt.param_groups:
            group["lr"] = lr
        x = data.pixels(data.sample_images(tc["batch_size"], g))
        loss, terms = vae_step(vae, x, tc, g, device, amp)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(vae.parameters(), tc.get("grad_clip", 1.0))
        scaler.step(opt)
        scaler.update()
        step += 1
        log.add(x.shape[0], loss=loss, **terms)
        seconds += time.time() - t0
        if step % cfg["log_every"] == 0 or step == tc["steps"]:
            log.flush(step, lr, seconds)
        if time.time() - last_ckpt > 60 * cfg.get("checkpoint_minutes", 3):
            checkpoint(False)
            last_ckpt = time.time()
    checkpoint(True)
    return vae.eval()


@torch.no_grad()
def encode_dataset(vae, data, run, device, cfg, resume):
    """Latent mean/logvar of every image and the scaling factor 1/std(latent samples), cached in latents.pt."""
    path = os.path.join(run, "latents.pt")
    if resume and os.path.exists(path):
        ck = load_checkpoint(path, device)
        if ck["n"] == data.n:
            return ck["mean"], ck["logvar"], ck["scaling_factor"]
    means, logvars = [], []
    for i in range(0, data.n, 256):
        idx = torch.arange(i, min(i + 256, data.n), device=device)
        with autocast(device, cfg.get("amp", "bf16")):
            m, lv = vae.encode(data.pixels(idx))
        means.append(m.float())
        logvars.append(lv.float())
    mean, logvar = torch.cat(means), torch.cat(logvars)
    g = torch.Generator(device=device)
    g.manual_seed(cfg["seed"] + 2)
    z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=g, device=device)
    sf = float(1.0 / z.std())
    save_checkpoint(path, {"mean": mean, "logvar": logvar, "scaling_factor": sf, "n": data.n})
    stats = {"scaling_factor": sf, "latent_mean": float(z.mean()), "latent_std": float(z.std()),
             "posterior_std_mean": float((0.5 * logvar).exp().mean())}
    with open(os.path.join(run, "latent_stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    print(f"[latents] {data.n} images, std {stats['latent_std']:.4f} -> scaling_factor {sf:.5f}", file=sys.stderr)
    return mean, logvar, sf


# --------------------------------------------------------------------------------------------
# stage 2: text encoder + UNet


def unet_step(unet, clip, data, lat_mean, lat_logvar, sf, ac, cfg, g, device):
    tc, sched = cfg["unet_train"], cfg["scheduler"]
    b = tc["batch_size"]
    idx = data.sample_images(b, g)
    ids = data.caption_ids_for(idx, g, tc.get("cond_drop", 0.1))
    z = (lat_mean[idx] + (0.5 * lat_logvar[idx]).exp() * torch.randn(lat_mean[idx].shape, generator=g, device=device)) * sf
    t = torch.randint(0, ac.shape[0], (b,), generator=g, device=device)
    noise = torch.randn(z.shape, generator=g, device=device)
    ab = ac[t].view(-1, 1, 1, 1)
    noisy, target = sampling.training_target(sched, z, noise, ab)
    with autocast(device, cfg.get("amp", "bf16")):
        ctx = clip(ids)["last_hidden_state"]
        pred = unet(noisy, t, ctx)
    mse = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))
    gamma = tc.get("min_snr_gamma")
    if gamma:
        # Min-SNR-gamma weighting (Hang et al. 2023): caps the weight of low-noise steps.
        snr = (ab / (1 - ab)).view(-1)
        w = snr.clamp(max=gamma) / (snr if sched.get("prediction_type", "epsilon") == "epsilon" else snr + 1)
        mse = mse * w
    return mse.mean(), b


def ema_models(cfg, ema, device):
    unet = sdmodels.build("unet", cfg["model"]["unet"]).to(device)
    clip = sdmodels.build("text_encoder", cfg["model"]["text_encoder"]).to(device)
    unet.load_state_dict(ema.state_dict("unet"))
    clip.load_state_dict(ema.state_dict("text_encoder"))
    return unet.eval(), clip.eval()


@torch.no_grad()
def sample_grid(cfg, unet, clip, vae, sf, ids, empty_ids, path, device, steps=None, seed=0):
    """Images for the token ids `ids` (B, 77) with the config's sampler, saved as a PNG grid."""
    sc = cfg["sample"]
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    with autocast(device, cfg.get("amp", "bf16")):
        ctx = clip(ids)["last_hidden_state"].float()
        unc = clip(empty_ids[None].expand(ids.shape[0], -1))["last_hidden_state"].float()
    lat_hw = cfg["model"]["vae"].get("sample_size", 64) // vae.scale_factor
    shape = (cfg["model"]["unet"].get("in_channels", 4), lat_hw, lat_hw)
    with autocast(device, cfg.get("amp", "bf16")):
        lat = sampling.sample(unet, ctx, unc, cfg["scheduler"], steps or sc["steps"], sc["guidance"], sc["sampler"], g, shape)
        img = sampling.decode(vae, lat, sf).float()
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(sampling.to_grid(img, min(8, img.shape[0]))).save(path)
    return img


def train_unet(cfg, data, vae, lat_mean, lat_logvar, sf, run, device, deadline, resume, quiet=False):
    tc = cfg["unet_train"]
    amp = cfg.get("amp", "bf16")
    path = os.path.join(run, "unet.pt")
    torch.manual_seed(cfg["seed"] + 3)
    unet = sdmodels.build("unet", cfg["model"]["unet"]).to(device)
    clip = sdmodels.build("text_encoder", cfg["model"]["text_encoder"]).to(device)
    ema = EMA({"unet": unet, "text_encoder": clip})
    opt = make_optimizer([unet, clip], tc, device)
    scaler = grad_scaler(device, amp)
    g = torch.Generator(device=device)
    g.manual_seed(cfg["seed"] + 4)
    step, seconds = 0, 0.0
    if resume and os.path.exists(path):
        ck = load_checkpoint(path, "cpu")
        unet.load_state_dict(ck["unet"])
        clip.load_state_dict(ck["text_encoder"])
        ema.load(ck["ema"])
        sf = ck["scaling_factor"]
        if ck.get("done") and ck["step"] >= tc["steps"]:
            return ema
        opt.load_state_dict(ck["opt"])
        g.set_state(ck["rng"].cpu())
        step, seconds = ck["step"], ck["train_seconds"]
        print(f"[unet] resuming at step {step}", file=sys.stderr)
    ac = sampling.alphas_cumprod(cfg["scheduler"]).float().to(device)
    fwd_unet = unet
    if cfg.get("compile") and device.type == "cuda" and hasattr(torch, "compile"):
        fwd_unet = torch.compile(unet)

    def checkpoint(done):
        save_checkpoint(path, {"unet": unet.state_dict(), "text_encoder": clip.state_dict(), "ema": ema.params,
                               "opt": opt.state_dict(), "rng": g.get_state(), "step": step, "train_seconds": seconds,
                               "done": done, "scaling_factor": sf, "config": cfg["model"]})

    log = Logger(run, "unet", quiet)
    last_ckpt = time.time()
    unet.train()
    clip.train()
    params = list(unet.parameters()) + list(clip.parameters())
    while step < tc["steps"]:
        if deadline.passed():
            checkpoint(False)
            raise Incomplete(f"unet stage at step {step}/{tc['steps']}")
        t0 = time.time()
        lr = lr_at(step, tc)
        for group in opt.param_groups:
            group["lr"] = lr
        loss, b = unet_step(fwd_unet, clip, data, lat_mean, lat_logvar, sf, ac, cfg, g, device)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, tc.get("grad_clip", 1.0))
        scaler.step(opt)
        scaler.update()
        step += 1
        ema.update(min(tc.get("ema_decay", 0.999), (1 + step) / (10 + step)))
        log.add(b, loss=loss)
        seconds += time.time() - t0
        if step % cfg["log_every"] == 0 or step == tc["steps"]:
            log.flush(step, lr, seconds)
        every = tc.get("sample_every", 0)
        if every and step % every == 0 and step < tc["steps"] and data.heldout_ids is not None:
            eu, ec = ema_models(cfg, ema, device)
            n = cfg["sample"]["count"]
            sample_grid(cfg, eu, ec, vae, sf, data.heldout_ids[:n], data.empty_ids,
                        os.path.join(run, "samples", f"step{step:06d}.png"), device)
        if time.time() - last_ckpt > 60 * cfg.get("checkpoint_minutes", 3):
            checkpoint(False)
            last_ckpt = time.time()
    checkpoint(True)
    return ema


# --------------------------------------------------------------------------------------------
# main


class Deadline:
    def __init__(self, minutes):
        self.at = time.time() + 60 * minutes if minutes and minutes > 0 else float("inf")

    def passed(self):
        return time.time() >= self.at


def resolve_config(args):
    saved = os.path.join(args.run, "config.json")
    if args.resume and os.path.exists(saved):
        with open(saved) as f:
            cfg = json.load(f)
        if not args.extend:
            return cfg
        # A longer schedule for the same models: only the training sections come from --config.
        with open(args.config) as f:
            new = json.load(f)
        for key in ("model", "scheduler", "seed"):
            if new.get(key) != cfg.get(key):
                sys.exit(f"train: --extend: {args.config} changes \"{key}\" of the run; start a new run instead")
        for key in ("vae_train", "unet_train"):
            if new[key]["steps"] < cfg[key]["steps"]:
                sys.exit(f"train: --extend: {args.config} shortens {key}.steps ({cfg[key]['steps']} -> {new[key]['steps']})")
        cfg.update(vae_train=new["vae_train"], unet_train=new["unet_train"])
        return cfg
    if args.extend:
        sys.exit("train: --extend needs --resume and a run folder with a saved config")
    with open(args.config) as f:
        cfg = json.load(f)
    if args.seed is not None:
        cfg["seed"] = args.seed
    if args.amp:
        cfg["amp"] = args.amp
    if args.smoke:
        s = cfg["smoke"]
        cfg["vae_train"].update(steps=s["vae_steps"], batch_size=s["vae_batch_size"], warmup=1)
        cfg["unet_train"].update(steps=s["unet_steps"], batch_size=s["unet_batch_size"], warmup=1, sample_every=0)
        cfg["sample"].update(steps=s["sample_steps"], count=s["sample_count"])
        cfg["log_every"] = 1
        cfg["limit_images"] = s["limit_images"]
    if args.data:
        cfg["data"] = args.data
    if not os.path.isabs(cfg["data"]):
        cfg["data"] = os.path.join(HERE, cfg["data"])
    return cfg


def pick_device(name):
    if name and name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def forward_macs(model, *inputs):
    """Multiply-accumulates of one forward pass: convolutions, linear layers and attention products."""
    total = [0]
    hooks = []

    def conv(m, inp, out):
        total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, inp, out):
        total[0] += out.numel() * m.in_features

    def attn(m, inp, out):
        x = inp[0]
        if x.dim() == 4:  # VAE attention on (B, C, H, W)
            b, c, h, w = x.shape
            total[0] += 2 * b * (h * w) ** 2 * c
        else:
            ctx = inp[1] if len(inp) > 1 and inp[1] is not None and x.dim() == 3 and inp[1].dim() == 3 else x
            total[0] += 2 * x.shape[0] * x.shape[1] * ctx.shape[1] * out.shape[-1]

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, (sdmodels.Attention, sdmodels.VAEAttention, sdmodels.CLIPAttention)):
            hooks.append(m.register_forward_hook(attn))
    with torch.no_grad():
        model(*inputs)
    for h in hooks:
        h.remove()
    return total[0]


def bench(cfg, device, steps):
    """Seconds per optimizer step of each stage at the configured batch sizes, on synthetic data."""
    data = Dataset.synthetic(device)
    results = {}
    vae = sdmodels.build("vae", cfg["model"]["vae"]).to(device).train()
    tc = cfg["vae_train"]
    opt = make_optimizer([vae], tc, device)
    g = torch.Generator(device=device)
    g.manual_seed(0)
    times = []
    for i in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        loss, _ = vae_step(vae, data.pixels(data.sample_images(tc["batch_size"], g)), tc, g, device, cfg.get("amp", "bf16"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.time() - t0)
        print(f"[bench] vae step {i} {times[-1]:.3f} s{' (warm-up)' if i == 0 else ''}", file=sys.stderr)
    results["vae"] = sum(times[1:]) / steps
    with torch.no_grad():
        mean, logvar = vae.encode(data.pixels(torch.arange(64, device=device)))
    unet = sdmodels.build("unet", cfg["model"]["unet"]).to(device).train()
    clip = sdmodels.build("text_encoder", cfg["model"]["text_encoder"]).to(device).train()
    tc = cfg["unet_train"]
    opt = make_optimizer([unet, clip], tc, device)
    ema = EMA({"unet": unet, "text_encoder": clip})
    ac = sampling.alphas_cumprod(cfg["scheduler"]).float().to(device)
    data.n = 64
    data.weights = data.weights[:64]
    times = []
    for i in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        loss, _ = unet_step(unet, clip, data, mean.float(), logvar.float(), 1.0, ac, cfg, g, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(0.999)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.time() - t0)
        print(f"[bench] unet step {i} {times[-1]:.3f} s{' (warm-up)' if i == 0 else ''}", file=sys.stderr)
    results["unet"] = sum(times[1:]) / steps
    total = results["vae"] * cfg["vae_train"]["steps"] + results["unet"] * cfg["unet_train"]["steps"]
    # Training FLOPs per sample ~ 3 x forward (backward costs about twice the forward), 2 FLOPs per MAC.
    cpu = torch.device("cpu")
    gflop = {
        "vae": 6 * forward_macs(vae.to(cpu), torch.zeros(1, 3, 64, 64)) / 1e9,
        "unet": 6 * (forward_macs(unet.to(cpu), torch.zeros(1, 4, 16, 16), torch.zeros(1), torch.zeros(1, 77, clip.config["hidden_size"]))
                     + forward_macs(clip.to(cpu), torch.full((1, 77), 49407))) / 1e9,
    }
    print(json.dumps({
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "vae_s_per_step": round(results["vae"], 4), "vae_batch": cfg["vae_train"]["batch_size"],
        "unet_s_per_step": round(results["unet"], 4), "unet_batch": cfg["unet_train"]["batch_size"],
        "estimated_total_minutes": round(total / 60, 1),
        "train_gflop_per_sample": {k: round(v, 2) for k, v in gflop.items()},
        "total_train_pflop": round((gflop["vae"] * cfg["vae_train"]["steps"] * cfg["vae_train"]["batch_size"]
                                    + gflop["unet"] * cfg["unet_train"]["steps"] * cfg["unet_train"]["batch_size"]) / 1e6, 2),
        "params": {"vae": sdmodels.param_count(vae), "unet": sdmodels.param_count(unet), "text_encoder": sdmodels.param_count(clip)},
    }, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(HERE, "config.json"), help="training config (default tools/train/config.json)")
    ap.add_argument("--run", default=None, help="run folder (default tools/train/runs/demo, or runs/smoke with --smoke)")
    ap.add_argument("--data", default=None, help="prepared dataset .npz (default: the config's \"data\")")
    ap.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoints and saved config")
    ap.add_argument("--extend", action="store_true",
                    help="with --resume: continue a run to the longer schedule of --config (same models)")
    ap.add_argument("--max-minutes", type=float, default=0, help="stop, checkpoint and exit 75 after this long (default 0: no limit)")
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto (default auto: cuda when available)")
    ap.add_argument("--seed", type=int, default=None, help="override the config's seed")
    ap.add_argument("--amp", choices=["bf16", "fp16", "none"], default=None, help="autocast dtype on CUDA (default: config)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default 0: torch's choice)")
    ap.add_argument("--smoke", action="store_true", help="a few steps of every stage on a tiny subset, then samples")
    ap.add_argument("--bench", type=int, default=0, metavar="N", help="time N steps of each stage on synthetic data and exit")
    ap.add_argument("--quiet", action="store_true", help="no per-log-step lines on stderr")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.run = args.run or os.path.join(HERE, "runs", "smoke" if args.smoke else "demo")
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    cfg = resolve_config(args)
    if args.bench:
        bench(cfg, device, args.bench)
        return 0

    if args.smoke and not args.resume and os.path.isdir(args.run):
        shutil.rmtree(args.run)
    os.makedirs(args.run, exist_ok=True)
    with open(os.path.join(args.run, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    deadline = Deadline(args.max_minutes)
    t_start = time.time()
    data = Dataset.load(cfg["data"], device, cfg.get("limit_images", 0))
    print(f"train: {data.n} images on {device}, run folder {args.run}", file=sys.stderr)
    status = {"done": False, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
              else f"cpu ({torch.get_num_threads()} threads)", "torch": torch.__version__}
    try:
        vae = train_vae(cfg, data, args.run, device, deadline, args.resume, args.quiet)
        status["stage"] = "latents"
        lat_mean, lat_logvar, sf = encode_dataset(vae, data, args.run, device, cfg, args.resume)
        status.update(stage="unet", scaling_factor=sf)
        ema = train_unet(cfg, data, vae, lat_mean, lat_logvar, sf, args.run, device, deadline, args.resume, args.quiet)
        sf = load_checkpoint(os.path.join(args.run, "unet.pt"), "cpu")["scaling_factor"]
        if data.heldout_ids is not None:
            unet, clip = ema_models(cfg, ema, device)
            n = min(cfg["sample"]["count"], len(data.heldout))
            sample_grid(cfg, unet, clip, vae, sf, data.heldout_ids[:n], data.empty_ids,
                        os.path.join(args.run, "samples", "final.png"), device)
        status.update(stage="done", done=True)
    except Incomplete as e:
        status["stopped_at"] = str(e)
        print(f"train: time budget spent, {e}; rerun with --resume", file=sys.stderr)
    status["wall_seconds_this_call"] = round(time.time() - t_start, 1)
    with open(os.path.join(args.run, "status.json"), "w") as f:
        json.dump(status, f, indent=1)
    if not status["done"]:
        return EXIT_INCOMPLETE
    print(f"train: done; export with: python3 export.py --run {args.run}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
