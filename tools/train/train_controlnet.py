#!/usr/bin/env python3
"""Train a Canny ControlNet for the demo model: the UNet, text encoder and VAE stay frozen.

  python3 train_controlnet.py --run runs/canny                         # config-controlnet.json
  python3 train_controlnet.py --run runs/canny --resume --max-minutes 9  # in chunks; exits 75 until done
  python3 train_controlnet.py --smoke                                  # a few steps on a few images
  python3 train_controlnet.py --bench 5                                # seconds per step, estimated minutes

The base model (--base, or the config's "base") is an exported diffusers folder such as
models/gosd-emoji, or a train.py run folder (its EMA weights). The ControlNet starts as
ControlNetModel.from_unet(base UNet) with conditioning_embedding_out_channels from the config
(three widths: two stride-2 steps take the 64x64 edge map to the 16x16 latents) and learns to
predict the noise of (image latents, caption) given the image's Canny edges (canny_data.py):
train.py's epsilon loss with min-SNR weighting, the same schedule and caption dropout, AdamW
with warmup + cosine, an EMA of the weights (exported), gradient clipping. Seeded: the batch
order, noise and timesteps come from a seeded generator checkpointed with the weights.

Run folder: config.json (resolved), controlnet.pt (model, EMA, optimizer, RNG, step), loss.csv,
status.json, samples/final.png (edge maps over generated images). export_controlnet.py writes
the diffusers folder. Exit status: 0 done, 75 stopped by --max-minutes (rerun with --resume),
1 error, 2 usage.
"""

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import canny_data  # noqa: E402
import export  # noqa: E402
import sampling  # noqa: E402
import sdmodels  # noqa: E402
import train  # noqa: E402

EXIT_INCOMPLETE = train.EXIT_INCOMPLETE


# --------------------------------------------------------------------------------------------
# frozen base model and data


def load_base(path, device):
    """-> dict(unet, text_encoder, vae (frozen, eval, float32), scaling_factor, scheduler, source).

    path: an exported diffusers folder (model_index.json) or a train.py run (unet.pt, EMA weights)."""
    if os.path.isfile(os.path.join(path, "model_index.json")):
        m = export.load_folder(path)
        base = {"unet": m["unet"], "text_encoder": m["text_encoder"], "vae": m["vae"],
                "scaling_factor": m["vae"].config["scaling_factor"], "scheduler": m["scheduler"]}
    elif os.path.isfile(os.path.join(path, "unet.pt")):
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        vae = sdmodels.AutoencoderKL(sdmodels.full_config("vae", cfg["model"]["vae"]))
        vae.load_state_dict(train.load_checkpoint(os.path.join(path, "vae.pt"), "cpu")["model"])
        ck = train.load_checkpoint(os.path.join(path, "unet.pt"), "cpu")
        unet = sdmodels.UNet2DConditionModel(sdmodels.full_config("unet", cfg["model"]["unet"]))
        clip = sdmodels.CLIPTextModel(sdmodels.full_config("text_encoder", cfg["model"]["text_encoder"]))
        unet.load_state_dict({k[5:]: v for k, v in ck["ema"].items() if k.startswith("unet.")})
        clip.load_state_dict({k[13:]: v for k, v in ck["ema"].items() if k.startswith("text_encoder.")})
        base = {"unet": unet, "text_encoder": clip, "vae": vae, "scaling_factor": ck["scaling_factor"],
                "scheduler": cfg["scheduler"]}
    else:
        sys.exit(f"train_controlnet: base model {path} is neither a diffusers folder (model_index.json) "
                 "nor a train.py run (unet.pt); export the demo model first")
    for k in ("unet", "text_encoder", "vae"):
        base[k] = base[k].float().to(device).eval().requires_grad_(False)
    base["source"] = path
    return base


class ControlData:
    """Images' latents, captions' text-encoder outputs and edge maps, all precomputed once
    with the frozen base networks (the dataset is a few hundred images)."""

    def __init__(self, data, edges, base, device):
        self.data = data  # train.Dataset
        self.device = device
        n = data.n
        self.edges = torch.from_numpy(np.ascontiguousarray(edges[:n])).to(device)  # (N, H, W) uint8
        with torch.no_grad():
            means, logvars = [], []
            for i in range(0, n, 128):
                m, lv = base["vae"].encode(data.pixels(torch.arange(i, min(i + 128, n), device=device)))
                means.append(m)
                logvars.append(lv)
            self.lat_mean, self.lat_logvar = torch.cat(means), torch.cat(logvars)
            # Only the captions of the images used (smoke runs use a few).
            used = torch.unique(data.pair_captions[: int(data.offsets[n])])
            self.caption_row = torch.full((data.caption_ids.shape[0],), -1, dtype=torch.long, device=device)
            self.caption_row[used] = torch.arange(len(used), device=device)
            ctx = [base["text_encoder"](data.caption_ids[used[i:i + 256]])["last_hidden_state"] for i in range(0, len(used), 256)]
            self.contexts = torch.cat(ctx)  # (captions used, 77, D)
            self.empty = base["text_encoder"](data.empty_ids[None])["last_hidden_state"][0]
        self.sf = base["scaling_factor"]

    def cond(self, idx):
        """Edge maps of images idx as the ControlNet's input: (B, 3, H, W) in [0, 1] (gray as RGB)."""
        return self.edges[idx].float().div(255.0)[:, None].expand(-1, 3, -1, -1)

    def batch(self, b, g, cond_drop):
        """A training batch: image indices, scaled latent samples, text contexts (some empty)."""
        d = self.data
        idx = d.sample_images(b, g)
        start = d.offsets[idx]
        count = d.offsets[idx + 1] - start
        pick = (torch.rand(b, generator=g, device=self.device) * count).long()
        caps = d.pair_captions[start + torch.minimum(pick, count - 1)]
        ctx = self.contexts[self.caption_row[caps]]
        if cond_drop > 0:
            drop = torch.rand(b, generator=g, device=self.device) < cond_drop
            ctx = torch.where(drop[:, None, None], self.empty[None], ctx)
        eps = torch.randn(self.lat_mean[idx].shape, generator=g, device=self.device)
        z = (self.lat_mean[idx] + (0.5 * self.lat_logvar[idx]).exp() * eps) * self.sf
        return idx, z, ctx


def load_edges(path, data_path, n_images):
    if not os.path.isfile(path):
        sys.exit(f"train_controlnet: edge maps {path} not found; run canny_data.py (make canny) first")
    with np.load(path) as e, np.load(data_path) as d:
        if len(e["edges"]) != len(d["images"]) or [str(s) for s in e["image_ids"]] != [str(s) for s in d["image_ids"]]:
            sys.exit(f"train_controlnet: {path} was not made from {data_path}; rerun canny_data.py")
        return e["edges"][:n_images]


# --------------------------------------------------------------------------------------------
# training


def controlnet_step(cn, unet, cd, ac, cfg, g, device):
    """One batch: the ControlNet's residuals steer the frozen UNet; train.py's loss."""
    tc, sched = cfg["train"], cfg["scheduler"]
    b = tc["batch_size"]
    idx, z, ctx = cd.batch(b, g, tc.get("cond_drop", 0.1))
    t = torch.randint(0, ac.shape[0], (b,), generator=g, device=device)
    noise = torch.randn(z.shape, generator=g, device=device)
    ab = ac[t].view(-1, 1, 1, 1)
    noisy, target = sampling.training_target(sched, z, noise, ab)
    with train.autocast(device, cfg.get("amp", "none")):
        down, mid = cn(noisy, t, ctx, cd.cond(idx))
        pred = unet(noisy, t, ctx, down, mid)
    mse = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))
    gamma = tc.get("min_snr_gamma")
    if gamma:
        snr = (ab / (1 - ab)).view(-1)
        w = snr.clamp(max=gamma) / (snr if sched.get("prediction_type", "epsilon") == "epsilon" else snr + 1)
        mse = mse * w
    return mse.mean(), b


class Controlled(torch.nn.Module):
    """The base UNet steered by a ControlNet on a fixed control image, with the UNet's call
    signature, for sampling.sample (whose batches are [uncond rows, cond rows])."""

    def __init__(self, unet, cn, cond, scale=1.0):
        super().__init__()
        self.unet, self.cn, self.cond, self.scale = unet, cn, cond, scale
        self.config = unet.config

    def forward(self, x, t, ctx):
        cond = self.cond.repeat(x.shape[0] // self.cond.shape[0], 1, 1, 1)
        down, mid = self.cn(x, t, ctx, cond, conditioning_scale=self.scale)
        return self.unet(x, t, ctx, down, mid)


@torch.no_grad()
def sample_grid(cfg, base, cn, cd, idx, path, device, seed=0):
    """Edge maps of images idx (top row) over the images generated for them with their first caption."""
    sc = cfg["sample"]
    d = cd.data
    ctx = cd.contexts[cd.caption_row[d.pair_captions[d.offsets[idx]]]]
    unc = cd.empty[None].expand(len(idx), -1, -1)
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    hw = cd.edges.shape[1] // base["vae"].scale_factor
    lat = sampling.sample(Controlled(base["unet"], cn, cd.cond(idx)), ctx, unc, cfg["scheduler"], sc["steps"], sc["guidance"],
                          sc["sampler"], g, (4, hw, hw))
    img = sampling.decode(base["vae"], lat, cd.sf).float().cpu()
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    grid = torch.cat([cd.cond(idx).cpu(), img])
    Image.fromarray(sampling.to_grid(grid, len(idx))).save(path)


def train_controlnet(cfg, base, cd, run, device, deadline, resume, quiet=False):
    tc = cfg["train"]
    path = os.path.join(run, "controlnet.pt")
    torch.manual_seed(cfg["seed"])
    cn = sdmodels.ControlNetModel.from_unet(base["unet"], **cfg["controlnet"]).to(device)
    ema = train.EMA({"controlnet": cn})
    opt = train.make_optimizer([cn], tc, device)
    scaler = train.grad_scaler(device, cfg.get("amp", "none"))
    g = torch.Generator(device=device)
    g.manual_seed(cfg["seed"] + 1)
    step, seconds = 0, 0.0
    if resume and os.path.exists(path):
        ck = train.load_checkpoint(path, "cpu")
        cn.load_state_dict(ck["controlnet"])
        ema.load(ck["ema"])
        if ck.get("done"):
            return cn, ema
        opt.load_state_dict(ck["opt"])
        g.set_state(ck["rng"].cpu())
        step, seconds = ck["step"], ck["train_seconds"]
        print(f"[controlnet] resuming at step {step}", file=sys.stderr)
    ac = sampling.alphas_cumprod(cfg["scheduler"]).float().to(device)

    def checkpoint(done):
        train.save_checkpoint(path, {"controlnet": cn.state_dict(), "ema": ema.params, "opt": opt.state_dict(),
                                     "rng": g.get_state(), "step": step, "train_seconds": seconds, "done": done,
                                     "config": cn.config, "scaling_factor": cd.sf})

    log = train.Logger(run, "controlnet", quiet)
    last_ckpt = time.time()
    cn.train()
    while step < tc["steps"]:
        if deadline.passed():
            checkpoint(False)
            raise train.Incomplete(f"controlnet at step {step}/{tc['steps']}")
        t0 = time.time()
        lr = train.lr_at(step, tc)
        for group in opt.param_groups:
            group["lr"] = lr
        loss, b = controlnet_step(cn, base["unet"], cd, ac, cfg, g, device)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(cn.parameters(), tc.get("grad_clip", 1.0))
        scaler.step(opt)
        scaler.update()
        step += 1
        ema.update(min(tc.get("ema_decay", 0.999), (1 + step) / (10 + step)))
        log.add(b, loss=loss)
        seconds += time.time() - t0
        if step % cfg["log_every"] == 0 or step == tc["steps"]:
            log.flush(step, lr, seconds)
        if time.time() - last_ckpt > 60 * cfg.get("checkpoint_minutes", 3):
            checkpoint(False)
            last_ckpt = time.time()
    checkpoint(True)
    return cn, ema


def ema_controlnet(cn, ema, device):
    out = sdmodels.ControlNetModel(cn.config).to(device)
    out.load_state_dict(ema.state_dict("controlnet"))
    return out.eval()


# --------------------------------------------------------------------------------------------
# main


def resolve_config(args):
    saved = os.path.join(args.run, "config.json")
    if args.resume and os.path.exists(saved):
        with open(saved) as f:
            return json.load(f)
    with open(args.config) as f:
        cfg = json.load(f)
    if args.seed is not None:
        cfg["seed"] = args.seed
    for key in ("data", "edges", "base"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)
    if not cfg.get("edges"):
        cfg["edges"] = canny_data.edges_path(cfg["data"])
    for key in ("data", "edges", "base"):
        if not os.path.isabs(cfg[key]):
            cfg[key] = os.path.normpath(os.path.join(HERE, cfg[key]))
    if args.smoke:
        s = cfg["smoke"]
        cfg["train"].update(steps=s["steps"], batch_size=s["batch_size"], warmup=1)
        cfg["sample"].update(steps=s["sample_steps"], count=s["sample_count"])
        cfg["log_every"] = 1
        cfg["limit_images"] = s["limit_images"]
    return cfg


def bench(cfg, base, device, steps):
    """Seconds per step at the configured batch size on synthetic latents, edges and contexts."""
    tc = cfg["train"]
    data = train.Dataset.synthetic(device, n=64)
    rng = np.random.default_rng(0)
    edges = (rng.random((64, 64, 64)) < 0.13).astype(np.uint8) * 255
    cd = ControlData(data, edges, base, device)
    torch.manual_seed(cfg["seed"])
    cn = sdmodels.ControlNetModel.from_unet(base["unet"], **cfg["controlnet"]).to(device).train()
    opt = train.make_optimizer([cn], tc, device)
    ema = train.EMA({"controlnet": cn})
    ac = sampling.alphas_cumprod(cfg["scheduler"]).float().to(device)
    g = torch.Generator(device=device)
    g.manual_seed(0)
    times = []
    for i in range(steps + 1):
        t0 = time.time()
        loss, _ = controlnet_step(cn, base["unet"], cd, ac, cfg, g, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(0.999)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.time() - t0)
        print(f"[bench] controlnet step {i} {times[-1]:.3f} s{' (warm-up)' if i == 0 else ''}", file=sys.stderr)
    s_per_step = sum(times[1:]) / steps
    print(json.dumps({
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(), "batch": tc["batch_size"], "s_per_step": round(s_per_step, 4),
        "steps": tc["steps"], "estimated_total_minutes": round(s_per_step * tc["steps"] / 60, 1),
        "params": {"controlnet": sdmodels.param_count(cn), "unet (frozen)": sdmodels.param_count(base["unet"])},
    }, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(HERE, "config-controlnet.json"), help="default tools/train/config-controlnet.json")
    ap.add_argument("--run", default=None, help="run folder (default tools/train/runs/canny, or runs/canny-smoke with --smoke)")
    ap.add_argument("--base", default=None, help="base model: diffusers folder or train.py run (default: the config's \"base\")")
    ap.add_argument("--data", default=None, help="prepared dataset .npz (default: the config's \"data\")")
    ap.add_argument("--edges", default=None, help="its edge maps from canny_data.py (default: DATA with -canny.npz)")
    ap.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint and saved config")
    ap.add_argument("--max-minutes", type=float, default=0, help="stop, checkpoint and exit 75 after this long (default 0: no limit)")
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto (default auto)")
    ap.add_argument("--seed", type=int, default=None, help="override the config's seed")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default 0: torch's choice)")
    ap.add_argument("--smoke", action="store_true", help="a few steps on a few images, then samples")
    ap.add_argument("--bench", type=int, default=0, metavar="N", help="time N steps on synthetic data and exit")
    ap.add_argument("--quiet", action="store_true", help="no per-log-step lines on stderr")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.run = args.run or os.path.join(HERE, "runs", "canny-smoke" if args.smoke else "canny")
    device = train.pick_device(args.device)
    cfg = resolve_config(args)
    base = load_base(cfg["base"], device)
    cfg["scheduler"] = base["scheduler"]  # the base model's training schedule
    if args.bench:
        bench(cfg, base, device, args.bench)
        return 0

    if args.smoke and not args.resume and os.path.isdir(args.run):
        shutil.rmtree(args.run)
    os.makedirs(args.run, exist_ok=True)
    with open(os.path.join(args.run, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    deadline = train.Deadline(args.max_minutes)
    t_start = time.time()
    data = train.Dataset.load(cfg["data"], device, cfg.get("limit_images", 0))
    cd = ControlData(data, load_edges(cfg["edges"], cfg["data"], data.n), base, device)
    print(f"train_controlnet: {data.n} images on {device}, base {cfg['base']}, run folder {args.run}", file=sys.stderr)
    status = {"done": False, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
              else f"cpu ({torch.get_num_threads()} threads)", "torch": torch.__version__}
    try:
        cn, ema = train_controlnet(cfg, base, cd, args.run, device, deadline, args.resume, args.quiet)
        # Edge maps of images spread over the dataset, over what the EMA ControlNet makes of them.
        idx = torch.linspace(0, data.n - 1, min(cfg["sample"]["count"], data.n), device=device).long()
        sample_grid(cfg, base, ema_controlnet(cn, ema, device), cd, idx, os.path.join(args.run, "samples", "final.png"), device)
        status.update(done=True)
    except train.Incomplete as e:
        status["stopped_at"] = str(e)
        print(f"train_controlnet: time budget spent, {e}; rerun with --resume", file=sys.stderr)
    status["wall_seconds_this_call"] = round(time.time() - t_start, 1)
    with open(os.path.join(args.run, "status.json"), "w") as f:
        json.dump(status, f, indent=1)
    if not status["done"]:
        return EXIT_INCOMPLETE
    print(f"train_controlnet: done; export with: python3 export_controlnet.py --run {args.run}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
