#!/usr/bin/env python3
"""Generate images from an exported model folder or a training run, to eyeball (and score) them.

  python3 sample.py --model runs/demo/export --prompt "a red apple" --prompt "a cat face"
  python3 sample.py --run runs/demo --heldout --eval            # held-out prompts + nearest-neighbour score
  python3 sample.py --model ../../models/gosd-emoji --sdcli /tmp/sdcli --heldout --eval --seeds 0,1,2

Prompts are tokenized by the runtime tokenizer (--tokenizer-cmd, as prepare_data.py does); the
held-out prompts' ids also come precomputed in the dataset .npz, so --heldout needs no Go.
With --sdcli the images are made by the Go runtime (sdcli txt2img on the exported folder,
DDIM, the same steps and guidance) instead of PyTorch: what users of the demo get.
--eval finds, for every generated image of a held-out prompt that names an emoji (one per seed
of --seeds), the nearest dataset image (pixel L2 at 64x64) and reports how often it is that
emoji, the same emoji in any skin tone, or the same subcategory. The grid shows the first seed.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import export  # noqa: E402
import prepare_data  # noqa: E402
import sampling  # noqa: E402
import sdmodels  # noqa: E402
import train  # noqa: E402


def load_models(args, device):
    """-> unet, clip, vae (eval, float32, on device), scaling factor, scheduler dict."""
    if args.model:
        m = export.load_folder(args.model)
        return (m["unet"].to(device), m["text_encoder"].to(device), m["vae"].to(device),
                m["vae"].config["scaling_factor"], m["scheduler"])
    with open(os.path.join(args.run, "config.json")) as f:
        cfg = json.load(f)
    vae = sdmodels.build("vae", cfg["model"]["vae"])
    vae.load_state_dict(train.load_checkpoint(os.path.join(args.run, "vae.pt"), "cpu")["model"])
    ck = train.load_checkpoint(os.path.join(args.run, "unet.pt"), "cpu")
    unet = sdmodels.build("unet", cfg["model"]["unet"])
    clip = sdmodels.build("text_encoder", cfg["model"]["text_encoder"])
    if args.no_ema:
        unet.load_state_dict(ck["unet"])
        clip.load_state_dict(ck["text_encoder"])
    else:
        unet.load_state_dict({k[5:]: v for k, v in ck["ema"].items() if k.startswith("unet.")})
        clip.load_state_dict({k[13:]: v for k, v in ck["ema"].items() if k.startswith("text_encoder.")})
    return (unet.eval().to(device), clip.eval().to(device), vae.eval().to(device), ck["scaling_factor"], cfg["scheduler"])


def label_grid(images, labels, cols, scale=2):
    """PIL image: tiles upscaled by `scale` with their prompt written underneath."""
    from PIL import Image, ImageDraw

    n, _, h, w = images.shape
    th, tw = h * scale, w * scale
    text_h = 24
    rows = (n + cols - 1) // cols
    canvas = Image.new("RGB", (cols * tw, rows * (th + text_h)), "white")
    draw = ImageDraw.Draw(canvas)
    arr = sampling.to_uint8(images)
    for i in range(n):
        r, c = divmod(i, cols)
        tile = Image.fromarray(arr[i]).resize((tw, th), Image.NEAREST)
        canvas.paste(tile, (c * tw, r * (th + text_h)))
        text = labels[i]
        lines = [text[:20], text[20:40]] if len(text) > 20 else [text]  # ~6 px per character, 128 px tiles
        for j, line in enumerate(lines):
            draw.text((c * tw + 2, r * (th + text_h) + th + j * 11), line, fill=(0, 0, 0))
    return canvas


def nearest_neighbour_eval(images, prompts, data_path):
    """Scores named held-out prompts by the nearest dataset image (pixel L2 at 64x64).
    images: (N, 3, 64, 64) in [0, 1], generated for prompts[i] (a list as long as images)."""
    with np.load(data_path) as d:
        ref = torch.from_numpy(d["images"]).permute(0, 3, 1, 2).float() / 255.0
        ids = [str(s) for s in d["image_ids"]]
        subcats = [str(s) for s in d["subcategory"]]
        labels = [str(s) for s in d["labels"]] if "labels" in d.files else ids
    dist = torch.cdist(images.float().cpu().reshape(len(images), -1), ref.reshape(len(ref), -1))
    nearest = dist.argmin(dim=1).tolist()
    rows, hits = [], {"id": 0, "any_tone": 0, "subcategory": 0}
    scored = 0
    by_kind = {}  # kind -> [hits (id or subcategory), scored]
    for i, p in enumerate(prompts):
        j = nearest[i]
        row = {"prompt": p["prompt"], "nearest_id": ids[j], "nearest_label": labels[j]}
        if p.get("id"):
            scored += 1
            base = lambda h: "-".join(x for x in h.split("-") if x not in ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"))  # noqa: E731
            row.update(id=p["id"], hit_id=ids[j] == p["id"], hit_any_tone=base(ids[j]) == base(p["id"]),
                       hit_subcategory=subcats[j] == p["subcategory"])
            hits["id"] += row["hit_id"]
            hits["any_tone"] += row["hit_any_tone"]
            hits["subcategory"] += row["hit_id"] or row["hit_subcategory"]
            if p.get("kind"):
                k = by_kind.setdefault(p["kind"], [0, 0])
                k[0] += row["hit_id"] or row["hit_subcategory"]
                k[1] += 1
        rows.append(row)
    summary = {k: f"{v}/{scored} ({100 * v / max(scored, 1):.1f}%)" for k, v in hits.items()}
    summary["id_or_subcategory"] = summary.pop("subcategory")
    summary["chance_id"] = f"1/{len(ids)}"
    if by_kind:
        summary["by_kind"] = {k: f"{h}/{n} ({100 * h / n:.1f}%) named emoji or subcategory" for k, (h, n) in by_kind.items()}
    # A uniformly random dataset image hits a prompt's subcategory with probability
    # (images of that subcategory) / N: the mean of that over the scored prompts.
    named = [p for p in prompts if p.get("id")]
    if named:
        chance = sum(subcats.count(p["subcategory"]) for p in named) / (len(named) * len(ids))
        summary["chance_id_or_subcategory"] = f"{100 * chance:.1f}%"
    return summary, rows


@torch.no_grad()
def reconstruct(args, device):
    """Originals (top rows) and VAE reconstructions through the latent mean (bottom rows), with PSNR."""
    _, _, vae, _, _ = load_models(args, device)
    with np.load(args.data) as d:
        n = len(d["images"])
        idx = np.linspace(0, n - 1, min(args.recon, n)).astype(int)
        x = torch.from_numpy(d["images"][idx]).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
    mean, _ = vae.encode(x)
    rec = vae.decode(mean).clamp(-1, 1)
    mse = ((rec - x) / 2).pow(2).mean(dim=(1, 2, 3))
    psnr = (10 * torch.log10(1 / mse)).mean().item()
    cols = min(8, len(idx))
    rows = []
    for i in range(0, len(idx), cols):
        rows += [x[i:i + cols], rec[i:i + cols]]
    from PIL import Image

    Image.fromarray(sampling.to_grid(torch.cat(rows).add(1).div(2).cpu(), cols)).save(args.out)
    print(json.dumps({"images": len(idx), "psnr_db": round(psnr, 2), "out": args.out}), file=sys.stderr)
    return 0


@torch.no_grad()
def generate_torch(args, unet, clip, vae, sf, sched, ids, seed, device):
    """One image per prompt (ids[0] is the empty prompt) -> (N, 3, H, W) in [0, 1] on the CPU."""
    latent_hw = args.size // vae.scale_factor
    shape = (unet.config.get("in_channels", 4), latent_hw, latent_hw)
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    images = []
    empty = clip(ids[:1])["last_hidden_state"]
    for start in range(1, len(ids), 16):
        chunk = ids[start:start + 16]
        ctx = clip(chunk)["last_hidden_state"]
        lat = sampling.sample(unet, ctx, empty.expand(len(chunk), -1, -1), sched, args.steps, args.guidance,
                              args.sampler, g, shape)
        images.append(sampling.decode(vae, lat, sf).cpu())
    return torch.cat(images)


def generate_sdcli(args, texts, seed):
    """One image per prompt made by `sdcli txt2img` (the Go runtime) -> (N, 3, H, W) in [0, 1]."""
    from PIL import Image

    images = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(texts):
            out = os.path.join(tmp, f"{i}.png")
            r = subprocess.run([args.sdcli, "txt2img", "-m", args.model, "-p", text, "--seed", str(seed),
                                "--steps", str(args.steps), "--cfg", str(args.guidance), "--sampler", args.sampler,
                                "-W", str(args.size), "-H", str(args.size), "-o", out],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"sdcli failed for {text!r}: {r.stderr.strip()}")
            arr = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32) / 255.0
            images.append(torch.from_numpy(arr).permute(2, 0, 1))
    return torch.stack(images)


def save_each(per_seed, seeds, folder):
    """Writes image i of seed s as folder/<i>-seed<s>.png, unscaled."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for seed, images in zip(seeds, per_seed):
        for i, a in enumerate(sampling.to_uint8(images)):
            Image.fromarray(a).save(os.path.join(folder, f"{i:03d}-seed{seed}.png"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="exported diffusers folder")
    src.add_argument("--run", help="training run folder (EMA weights unless --no-ema)")
    ap.add_argument("--no-ema", action="store_true", help="with --run: the raw weights")
    ap.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    ap.add_argument("--recon", type=int, default=0, metavar="N",
                    help="instead: VAE reconstructions of N dataset images (--data) and their PSNR")
    ap.add_argument("--heldout", action="store_true", help="sample every prompt of heldout_prompts.json")
    ap.add_argument("--heldout-file", default=os.path.join(HERE, "heldout_prompts.json"))
    ap.add_argument("--data", default=os.path.join(HERE, "data", "emoji64.npz"), help="prepared dataset (ids of held-out prompts, --eval)")
    ap.add_argument("--eval", action="store_true", help="nearest-neighbour score of the held-out prompts (needs --heldout, --data)")
    ap.add_argument("--tokenizer-cmd", default=prepare_data.DEFAULT_TOKENIZER_CMD, help="runtime tokenizer command")
    ap.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    ap.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5)")
    ap.add_argument("--sampler", choices=["ddim", "euler"], default="ddim", help="default ddim")
    ap.add_argument("--seed", type=int, default=0, help="default 0")
    ap.add_argument("--seeds", default="", help="comma-separated seeds, one image per prompt each (default: --seed)")
    ap.add_argument("--sdcli", default="", help="generate with this sdcli binary (the Go runtime) instead of PyTorch")
    ap.add_argument("--grid", type=int, default=0, help="prompts shown in the PNG grid (default 0: all)")
    ap.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto (default auto)")
    ap.add_argument("--out", default="samples.png", help="grid PNG to write (default samples.png)")
    ap.add_argument("--save-each", default="", metavar="DIR",
                    help="also write every image at its own size as DIR/<prompt index>-seed<seed>.png")
    ap.add_argument("--controlnet", default="", metavar="DIR", help="steer the UNet with this ControlNet folder (PyTorch only)")
    ap.add_argument("--control-image", default="", metavar="PNG",
                    help="its control image, used as it is (values / 255; gray taken for R, G and B), at --size")
    args = ap.parse_args(argv)
    if bool(args.controlnet) != bool(args.control_image):
        ap.error("--controlnet and --control-image go together")
    if args.controlnet and args.sdcli:
        ap.error("--controlnet samples with PyTorch; for sdcli give it --controlnet yourself")
    device = train.pick_device(args.device)

    if args.recon:
        return reconstruct(args, device)

    prompts = [{"prompt": p} for p in args.prompt]
    if args.heldout:
        with open(args.heldout_file) as f:
            prompts += json.load(f)["prompts"]
    if not prompts:
        ap.error("give --prompt, --heldout or --recon")
    texts = [p["prompt"] for p in prompts]

    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    per_seed = []
    if args.sdcli:
        if not args.model:
            ap.error("--sdcli needs --model (an exported folder)")
        for seed in seeds:
            per_seed.append(generate_sdcli(args, texts, seed))
    else:
        ids = None
        if os.path.exists(args.data) and not args.prompt:
            with np.load(args.data) as d:
                if "heldout" in d.files and [str(s) for s in d["heldout"]] == texts:
                    ids = np.concatenate([d["empty_ids"][None], d["heldout_ids"]])
        if ids is None:
            ids = prepare_data.tokenize([""] + texts, args.tokenizer_cmd)
        ids = torch.from_numpy(ids.astype(np.int64)).to(device)
        unet, clip, vae, sf, sched = load_models(args, device)
        if args.controlnet:
            import export_controlnet
            import train_controlnet
            from PIL import Image

            with Image.open(args.control_image) as im:
                if im.size != (args.size, args.size):
                    ap.error(f"--control-image is {im.size[0]}x{im.size[1]}, not {args.size}x{args.size}")
                cond = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
            unet = train_controlnet.Controlled(unet, export_controlnet.load_folder(args.controlnet).to(device), cond.to(device))
        for seed in seeds:
            per_seed.append(generate_torch(args, unet, clip, vae, sf, sched, ids, seed, device))
    if args.save_each:
        save_each(per_seed, seeds, args.save_each)
    n = min(args.grid or len(texts), len(texts))
    label_grid(per_seed[0][:n], texts[:n], cols=min(8, n)).save(args.out)
    print(f"sample: wrote {args.out} ({n} of {len(texts)} prompts, seed {seeds[0]})", file=sys.stderr)

    if args.eval:
        if not args.heldout or not os.path.exists(args.data):
            ap.error("--eval needs --heldout and --data")
        summary, rows = nearest_neighbour_eval(torch.cat(per_seed), prompts * len(seeds), args.data)
        summary.update(seeds=seeds, source="sdcli (Go runtime)" if args.sdcli else "PyTorch",
                       steps=args.steps, guidance=args.guidance, sampler=args.sampler)
        report = os.path.splitext(args.out)[0] + "-eval.json"
        with open(report, "w") as f:
            json.dump({"summary": summary, "prompts": rows}, f, indent=1)
        print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
