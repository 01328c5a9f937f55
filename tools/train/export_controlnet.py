#!/usr/bin/env python3
"""Export a train_controlnet.py run as a diffusers ControlNetModel folder.

  python3 export_controlnet.py --run runs/canny --out ../../models/gosd-emoji-canny [--eval REPORT.json]

Writes config.json (ControlNetModel, the base UNet's encoder settings), the EMA weights as
fp16 diffusion_pytorch_model.safetensors and a model card README.md (data, licence, recipe,
compute, evaluation when given), then reloads the folder strictly through sdmodels.py and checks
the weights fit --max-mb. Load it with `sdcli txt2img -m models/gosd-emoji --controlnet DIR`
or diffusers' ControlNetModel.from_pretrained(DIR).
"""

import argparse
import csv
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import export  # noqa: E402
import safetensors_io as st  # noqa: E402
import sdmodels  # noqa: E402
import train  # noqa: E402

WEIGHTS = "diffusion_pytorch_model.safetensors"


def write_folder(out, config, state, card=None, max_mb=8.0):
    """config: the ControlNet's config dict, state: its float state dict. Returns the weights' bytes."""
    os.makedirs(out, exist_ok=True)
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    cfg = {"_class_name": "ControlNetModel", "_diffusers_version": export.DIFFUSERS_VERSION, **dict(sorted(cfg.items()))}
    export.write_json(os.path.join(out, "config.json"), cfg)
    path = os.path.join(out, WEIGHTS)
    st.save_file(export.to_fp16(state, "controlnet"), path, metadata={"format": "pt"})
    size = os.path.getsize(path)
    if card is not None:
        with open(os.path.join(out, "README.md"), "w") as f:
            f.write(model_card(cfg, size, card))
    if max_mb and size / 1e6 > max_mb:
        raise ValueError(f"weights take {size / 1e6:.1f} MB, over the {max_mb} MB budget")
    return size


def load_folder(path, dtype=torch.float32):
    """The ControlNet of a diffusers ControlNetModel folder, loaded strictly."""
    with open(os.path.join(path, "config.json")) as f:
        cn = sdmodels.ControlNetModel(json.load(f))
    sdmodels.load_state_dict_strict(cn, st.load_file(os.path.join(path, WEIGHTS), dtype=dtype), path)
    return cn.to(dtype).eval()


def model_card(cfg, size, info):
    hc = cfg["conditioning_embedding_out_channels"]
    lines = [
        "---",
        "license: apache-2.0",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "tags: [controlnet, canny, stable-diffusion, emoji, tiny]",
        f"base_model: {info.get('base_name', 'gosd-emoji')}",
        "---",
        "",
        "# gosd emoji Canny ControlNet",
        "",
    ]
    if info.get("note"):
        lines += ["**Status:** " + info["note"], ""]
    lines += [
        "A Canny-edge ControlNet for gosd's bundled demo model (`models/gosd-emoji`), trained so that, given",
        "white-on-black edges at 64x64 and a prompt, the demo model draws an emoji-style picture that follows",
        "them (how closely: see Evaluation). It is a standard diffusers `ControlNetModel` folder:",
        "",
        "```sh",
        "sdcli txt2img -m models/gosd-emoji --controlnet models/gosd-emoji-canny \\",
        "    --control-image shape.png --control-preprocess canny -p \"a red heart\" -W 64 -H 64",
        "```",
        "",
        "(`--control-preprocess canny` makes the edges from any picture; an edge map can be passed as it is.)",
        "",
        "## Architecture",
        "",
        f"The base UNet's encoder half (channels {cfg['block_out_channels']}, {cfg['layers_per_block']} layers per block, "
        f"heads {cfg['attention_head_dim']}, cross-attention dim {cfg['cross_attention_dim']}), a control-image encoder with "
        f"widths {hc} ({len(hc) - 1} stride-2 steps: 64x64 edges to the 16x16 latents) and a 1x1 zero convolution per skip "
        f"and on the mid block: {info.get('params', 0) / 1e6:.2f} M parameters, {size / 1e6:.1f} MB in fp16.",
        "",
        "## Training data",
        "",
        f"The demo model's images ({info.get('images', '?')} Noto Color Emoji at 64x64 on white, from the npm package",
        "`emoji-datasource-google`) and their captions (from `emojibase-data`), each paired with its Canny edges made by",
        f"gosd's own Canny (`diffusion/control.Canny`, thresholds {info.get('thresholds', '?')}, on the RGB image: exactly",
        "what `sdcli --control-preprocess canny` computes).",
        "",
        "Attribution: the Noto Emoji images are Copyright Google Inc. and licensed under the Apache License 2.0",
        "(https://github.com/googlefonts/noto-emoji). emoji-datasource (Cal Henderson) and emojibase (Miles Johnson)",
        "are MIT-licensed. These weights are a derivative of the Noto images and are distributed under the Apache",
        "License 2.0.",
        "",
        "## Training",
        "",
        "gosd's tools/train (plain PyTorch): `python3 train_controlnet.py --run runs/canny` with",
        f"`config-controlnet.json`, seed {info.get('seed', '?')}. The ControlNet starts as a copy of the base UNet's encoder",
        "(diffusers' `ControlNetModel.from_unet`); the UNet, text encoder and VAE stay frozen. Epsilon-prediction loss",
        "with min-SNR-5 weighting on the base model's schedule, "
        f"{100 * info.get('cond_drop', 0):.0f}% empty captions, {info.get('steps', '?')} steps x batch {info.get('batch', '?')}, "
        f"AdamW lr {info.get('lr', '?')} with warmup and cosine decay, EMA {info.get('ema', '?')} (the exported weights).",
        f"Device: {info.get('device', '?')}; training time {info.get('train_minutes', '?')} minutes. "
        f"Final loss: {info.get('final_loss', '?')}.",
        "",
    ]
    ev = info.get("eval")
    if ev:
        s = ev["summary"]
        lines += [
            "## Evaluation",
            "",
            f"Edge agreement through sdcli ({s.get('steps', '?')} steps, guidance {s.get('guidance', '?')}, seeds {s.get('seeds', '?')}): "
            f"the Canny edges of each output against its control edges, matched within {s.get('tolerance_px', '?')} px.",
            "",
            "| control images | with the ControlNet (F1 / precision / recall) | without (F1) | another subject's edges (F1) |",
            "|---|---|---|---|",
        ]
        for group, g in s.get("groups", {}).items():
            lines.append(f"| {group} ({g['images']}) | {g['with']['f1']:.3f} / {g['with']['precision']:.3f} / {g['with']['recall']:.3f} "
                         f"| {g['without']['f1']:.3f} | {g.get('other_subject', {}).get('f1', float('nan')):.3f} |")
        lines.append("")
    lines += [
        "## Intended use and limits",
        "",
        "A demonstration of ControlNet in the gosd runtime that needs no download. It knows only emoji-like pictures",
        "at 64x64, the edge maps of its training images and simple outlines; busy or photographic edges give",
        "emoji-flavoured guesses. It works with the model it was trained for (`gosd-emoji`) only.",
        "",
    ]
    return "\n".join(lines)


def run_info(run, cfg):
    info = {"seed": cfg.get("seed"), "steps": cfg["train"]["steps"], "batch": cfg["train"]["batch_size"],
            "lr": cfg["train"]["lr"], "ema": cfg["train"].get("ema_decay"), "cond_drop": cfg["train"].get("cond_drop"),
            "base_name": os.path.basename(os.path.normpath(cfg.get("base", "gosd-emoji")))}
    csv_path = os.path.join(run, "loss.csv")
    if os.path.exists(csv_path):
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        if rows:
            info["final_loss"] = rows[-1]["loss"]
            info["train_minutes"] = round(float(rows[-1]["train_seconds"] or 0) / 60, 1)
    for key, path in (("images", cfg.get("data")), ("thresholds", cfg.get("edges"))):
        if path and os.path.exists(path):
            with np.load(path) as d:
                info[key] = len(d["images"]) if key == "images" else json.loads(str(d["meta"])).get("thresholds", "?")
    if cfg.get("limit_images"):
        info["images"] = min(cfg["limit_images"], info.get("images", cfg["limit_images"]))
    device = export.run_device(run)
    if device:
        info["device"] = device
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="train_controlnet.py run folder (config.json, controlnet.pt)")
    ap.add_argument("--out", default=None, help="output folder (default RUN/export)")
    ap.add_argument("--no-ema", action="store_true", help="export the raw instead of the EMA weights")
    ap.add_argument("--max-mb", type=float, default=8.0, help="fail when the weights exceed this many MB (default 8)")
    ap.add_argument("--eval", default="", metavar="JSON", help="eval_controlnet.py report to summarise in the model card")
    ap.add_argument("--note", default="", help="a status paragraph put at the top of the model card")
    args = ap.parse_args(argv)
    out = args.out or os.path.join(args.run, "export")
    with open(os.path.join(args.run, "config.json")) as f:
        cfg = json.load(f)
    ck = train.load_checkpoint(os.path.join(args.run, "controlnet.pt"), "cpu")
    if not ck.get("done"):
        print("export_controlnet: warning: the run is not finished; exporting its latest checkpoint", file=sys.stderr)
    if args.no_ema:
        state = ck["controlnet"]
    else:
        state = {k[len("controlnet."):]: v for k, v in ck["ema"].items() if k.startswith("controlnet.")}
    info = run_info(args.run, cfg)
    info["params"] = sum(v.numel() for v in state.values())
    if args.note:
        info["note"] = args.note
    if args.eval:
        with open(args.eval) as f:
            info["eval"] = json.load(f)
    size = write_folder(out, ck["config"], state, info, args.max_mb)
    load_folder(out)  # strict round trip through the config just written
    print(json.dumps({"out": out, "bytes": size, "mb": round(size / 1e6, 2), "params": info["params"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
