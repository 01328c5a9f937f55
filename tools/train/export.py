#!/usr/bin/env python3
"""Export a training run as a diffusers Stable Diffusion folder (fp16 safetensors + configs + card).

  python3 export.py --run runs/demo [--out runs/demo/export] [--tokenizer-src DIR]

Writes:
  model_index.json
  unet/config.json, unet/diffusion_pytorch_model.safetensors        (EMA weights by default)
  vae/config.json (scaling_factor from the data), vae/diffusion_pytorch_model.safetensors
  text_encoder/config.json (transformers CLIPTextConfig), text_encoder/model.safetensors ("text_model." keys)
  tokenizer/vocab.json, merges.txt (copied from --tokenizer-src), tokenizer_config.json, special_tokens_map.json
  scheduler/scheduler_config.json (DDIMScheduler or EulerDiscreteScheduler with the training schedule)
  README.md (model card)
then reloads the folder through sdmodels.py (strict) and checks the weights fit --max-mb.
"""

import argparse
import csv
import json
import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import safetensors_io as st  # noqa: E402
import sdmodels  # noqa: E402

# The configs follow the semantics of these library versions (the conformance kit was made with newer ones).
DIFFUSERS_VERSION = "0.30.0"
TRANSFORMERS_VERSION = "4.44.0"
WEIGHT_FILES = {
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
}
FP16_MAX = 65504.0


def default_tokenizer_src():
    for c in (os.path.join(REPO, "third_party", "clip"),
              os.path.join(os.path.dirname(REPO), "shared", "conformance", "sd1-tiny", "diffusers", "tokenizer"),
              "/work/shared/conformance/sd1-tiny/diffusers/tokenizer"):
        if os.path.isfile(os.path.join(c, "vocab.json")) and os.path.isfile(os.path.join(c, "merges.txt")):
            return c
    return None


def scheduler_config(sched, kind):
    common = {
        "beta_end": sched.get("beta_end", 0.012),
        "beta_schedule": sched.get("beta_schedule", "scaled_linear"),
        "beta_start": sched.get("beta_start", 0.00085),
        "num_train_timesteps": sched.get("num_train_timesteps", 1000),
        "prediction_type": sched.get("prediction_type", "epsilon"),
        "rescale_betas_zero_snr": False,
        "steps_offset": sched.get("steps_offset", 1),
        "timestep_spacing": sched.get("timestep_spacing", "leading"),
        "trained_betas": None,
    }
    if kind == "ddim":
        cfg = {"_class_name": "DDIMScheduler", "clip_sample": False, "clip_sample_range": 1.0,
               "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "set_alpha_to_one": False,
               "thresholding": False}
    elif kind == "euler":
        cfg = {"_class_name": "EulerDiscreteScheduler", "interpolation_type": "linear", "use_karras_sigmas": False,
               "timestep_type": "discrete", "final_sigmas_type": "zero"}
    else:
        raise ValueError(f"unknown scheduler {kind!r}")
    cfg["_diffusers_version"] = DIFFUSERS_VERSION
    cfg.update(common)
    return dict(sorted(cfg.items(), key=lambda kv: (kv[0] != "_class_name", kv[0])))


def to_fp16(state, what):
    out = {}
    for k, v in state.items():
        v = v.detach().float().cpu()
        if v.abs().max() > FP16_MAX:
            raise ValueError(f"{what}.{k}: values beyond float16 range")
        out[k] = v.half()
    return out


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def component_configs(arch, scaling_factor):
    unet = sdmodels.full_config("unet", arch["unet"])
    unet["_diffusers_version"] = DIFFUSERS_VERSION
    vae = sdmodels.full_config("vae", arch["vae"])
    vae["_diffusers_version"] = DIFFUSERS_VERSION
    vae["scaling_factor"] = float(scaling_factor)
    te = sdmodels.full_config("text_encoder", arch["text_encoder"])
    te.update({"dtype": "float16", "torch_dtype": "float16", "transformers_version": TRANSFORMERS_VERSION})
    sort = lambda d: dict(sorted(d.items(), key=lambda kv: (not kv[0].startswith("_"), kv[0])))  # noqa: E731
    return {"unet": sort(unet), "vae": sort(vae), "text_encoder": sort(te)}


def write_folder(out, arch, states, scaling_factor, sched, tokenizer_src, scheduler="ddim", card=None, max_mb=40.0):
    """Writes the diffusers folder; states: {"unet"|"vae"|"text_encoder": float state dict}. Returns sizes."""
    if tokenizer_src is None or not os.path.isfile(os.path.join(tokenizer_src, "vocab.json")):
        raise FileNotFoundError(f"tokenizer source {tokenizer_src!r} has no vocab.json/merges.txt (--tokenizer-src)")
    with open(os.path.join(tokenizer_src, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    if len(vocab) != 49408 or vocab.get("<|startoftext|>") != 49406 or vocab.get("<|endoftext|>") != 49407:
        raise ValueError(f"{tokenizer_src}/vocab.json is not the CLIP vocabulary (49408 entries, BOS 49406, EOS 49407)")

    os.makedirs(out, exist_ok=True)
    configs = component_configs(arch, scaling_factor)
    sizes = {}
    for kind, cfg in configs.items():
        d = os.path.join(out, kind)
        os.makedirs(d, exist_ok=True)
        write_json(os.path.join(d, "config.json"), cfg)
        state = states[kind]
        if kind == "text_encoder":
            state = sdmodels.text_encoder_state(state)
        path = os.path.join(d, WEIGHT_FILES[kind])
        st.save_file(to_fp16(state, kind), path, metadata={"format": "pt"})
        sizes[kind] = os.path.getsize(path)

    tok = os.path.join(out, "tokenizer")
    os.makedirs(tok, exist_ok=True)
    shutil.copyfile(os.path.join(tokenizer_src, "vocab.json"), os.path.join(tok, "vocab.json"))
    shutil.copyfile(os.path.join(tokenizer_src, "merges.txt"), os.path.join(tok, "merges.txt"))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    write_json(os.path.join(tok, "tokenizer_config.json"),
               {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
                "clean_up_tokenization_spaces": True, **special})
    write_json(os.path.join(tok, "special_tokens_map.json"), special)

    os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)
    sched_cfg = scheduler_config(sched, scheduler)
    write_json(os.path.join(out, "scheduler", "scheduler_config.json"), sched_cfg)
    write_json(os.path.join(out, "model_index.json"), {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", sched_cfg["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
    total_mb = sum(sizes.values()) / 1e6
    if card is not None:
        with open(os.path.join(out, "README.md"), "w") as f:
            f.write(model_card(configs, sizes, sched_cfg, card))
    if max_mb and total_mb > max_mb:
        raise ValueError(f"weights take {total_mb:.1f} MB, over the {max_mb} MB budget")
    return sizes


def load_folder(path, dtype=torch.float32):
    """Builds the three networks from an exported (or any SD 1.x/2.x diffusers) folder, strictly."""
    models = {}
    classes = {"unet": sdmodels.UNet2DConditionModel, "vae": sdmodels.AutoencoderKL, "text_encoder": sdmodels.CLIPTextModel}
    for kind, cls in classes.items():
        with open(os.path.join(path, kind, "config.json")) as f:
            cfg = json.load(f)
        model = cls(cfg)
        state = st.load_file(os.path.join(path, kind, WEIGHT_FILES[kind]), dtype=dtype)
        if kind == "text_encoder":
            state = sdmodels.text_encoder_state(state)
        sdmodels.load_state_dict_strict(model, state, f"{path}/{kind}")
        models[kind] = model.to(dtype).eval()
    with open(os.path.join(path, "scheduler", "scheduler_config.json")) as f:
        models["scheduler"] = json.load(f)
    return models


def model_card(configs, sizes, sched, info):
    u, v, t = configs["unet"], configs["vae"], configs["text_encoder"]
    params = info.get("params", {})
    mb = {k: s / 1e6 for k, s in sizes.items()}
    total = sum(mb.values())
    lines = [
        "---",
        "license: apache-2.0",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "tags: [stable-diffusion, text-to-image, emoji, tiny]",
        "---",
        "",
        "# gosd emoji demo model",
        "",
    ]
    if info.get("note"):
        lines += ["**Status:** " + info["note"], ""]
    subjects = bool(info.get("subjects"))
    examples = ("\"a red apple\", \"a cat face\", \"a red heart\", \"a penguin\"" if subjects else
                "\"a red apple\", \"a cat face\",\n\"thumbs up, dark skin tone\", \"flag of japan\"")
    lines += [
        "A very small Stable Diffusion model (the SD 1.x architecture, scaled down) trained from scratch on",
        "Noto Color Emoji images, so that gosd can make a real picture from a prompt on any CPU with",
        f"nothing to download. It draws 64x64 emoji-style images: {examples}.",
        "",
        "It is a standard diffusers folder: `StableDiffusionPipeline.from_pretrained(path)` loads it,",
        "with `height=width=64` (the VAE downsamples 4x, so the UNet runs on 16x16 latents).",
        "",
        "## Architecture",
        "",
        "| component | configuration | parameters | fp16 size |",
        "|---|---|---|---|",
        f"| UNet2DConditionModel | channels {u['block_out_channels']}, {u['layers_per_block']} layers per block, "
        f"heads {u['attention_head_dim']}, cross-attention dim {u['cross_attention_dim']}, linear projections | "
        f"{params.get('unet', 0) / 1e6:.2f} M | {mb['unet']:.1f} MB |",
        f"| AutoencoderKL | channels {v['block_out_channels']}, {v['layers_per_block']} layer per block, "
        f"{v['latent_channels']} latent channels, scaling_factor {v['scaling_factor']:.5f} | "
        f"{params.get('vae', 0) / 1e6:.2f} M | {mb['vae']:.1f} MB |",
        f"| CLIPTextModel | hidden {t['hidden_size']}, {t['num_hidden_layers']} layers, {t['num_attention_heads']} heads, "
        f"{t['hidden_act']}, CLIP BPE vocabulary (49408) | {params.get('text_encoder', 0) / 1e6:.2f} M | {mb['text_encoder']:.1f} MB |",
        f"| total | | {sum(params.values()) / 1e6:.2f} M | {total:.1f} MB |",
        "",
        f"Scheduler: {sched['_class_name']}, {sched['beta_schedule']} betas {sched['beta_start']}-{sched['beta_end']}, "
        f"{sched['num_train_timesteps']} steps, {sched['prediction_type']} prediction (the training schedule).",
        "Use classifier-free guidance (the empty prompt was trained as the unconditional input): guidance 4-7, 20-30 steps.",
        "",
        "## Training data",
        "",
        "Images: Noto Color Emoji, 64x64 PNGs as packaged by the npm package `emoji-datasource-google`"
        f" {info.get('sources', {}).get('emoji-datasource-google', '')}, composited onto white.",
    ]
    if subjects:
        lines += [
            "Subjects: the base emoji (no skin-tone variants, no flags) of the subcategories listed in",
            "tools/train/subjects.json of the gosd repository: faces, cat faces, hearts, mammals, birds, reptiles,",
            "marine animals, bugs, plants, fruit, vegetables, prepared food, sweets, drinks, vehicles, sky & weather,",
            "events, sports balls, musical instruments, phones, computers, cameras; the first of each subcategory",
            "in the emoji order, minus near-duplicates (moon phases, \"oncoming\" vehicles).",
            "Captions: each emoji's names (its `emojibase-data`"
            f" {info.get('sources', {}).get('emojibase-data', '')} label, its emoji-datasource name and short name)",
            "bare and in four fixed phrases: \"red apple\", \"a red apple\", \"red apple emoji\", \"emoji of a red apple\",",
            "\"a picture of a red apple\".",
        ]
    else:
        lines += [
            "Captions: built from the emoji names, labels, tags, groups and subgroups of `emojibase-data`"
            f" {info.get('sources', {}).get('emojibase-data', '')} and `emoji-datasource-google`",
            "(e.g. \"red apple\", \"red apple emoji\", \"red apple, fruit, food & drink\"), several per image.",
        ]
    lines += [
        f"{info.get('images', '?')} images, {info.get('captions', '?')} captions. A fixed list of held-out prompts",
        "(tools/train/heldout_prompts.json in the gosd repository) was excluded from training for evaluation.",
        "",
        "Attribution: the Noto Emoji images are Copyright Google Inc. and licensed under the Apache License 2.0",
        "(https://github.com/googlefonts/noto-emoji). emoji-datasource (Cal Henderson) and emojibase",
        "(Miles Johnson) are MIT-licensed. These weights are a derivative of the Noto images and are",
        "distributed under the Apache License 2.0.",
        "",
        "## Training",
        "",
        "Trained with gosd's tools/train (plain PyTorch, no diffusers), seed "
        f"{info.get('seed', '?')}: first the VAE ({info.get('vae_steps', '?')} steps, L1 + L2 + image-gradient L1 + small KL),",
        "then the text encoder and UNet together from scratch on the diffusion loss "
        f"({info.get('unet_steps', '?')} steps, batch {info.get('unet_batch', '?')}, {info.get('unet_lr', 'AdamW')}, min-SNR weighting,",
        "10% empty captions, EMA of the weights, which are the ones exported). "
        f"Device: {info.get('device', '?')}; training time {info.get('train_minutes', '?')} minutes.",
        f"Final losses: {info.get('final_losses', '?')}.",
        "",
    ]
    if info.get("commands"):
        lines += ["To reproduce, in tools/train of the gosd repository:", "", "```sh", *info["commands"], "```", ""]
    ev = info.get("eval")
    if ev:
        sm = ev["summary"]
        lines += [
            "## Evaluation",
            "",
            f"Held-out prompts that name an emoji, {len(sm.get('seeds', []))} seeds each, generated by "
            f"{sm.get('source', '?')} ({sm.get('sampler', '?')}, {sm.get('steps', '?')} steps, guidance {sm.get('guidance', '?')}).",
            "How often the nearest training image (pixel L2 at 64x64) is the named emoji or in its subcategory:",
            f"**{sm['id_or_subcategory']}** (a random training image: {sm.get('chance_id_or_subcategory', '?')});"
            f" exactly the named emoji: {sm.get('id', '?')} (chance {sm.get('chance_id', '?')}).",
        ]
        for kind, score in sm.get("by_kind", {}).items():
            lines.append(f"- {kind}: {score}")
        lines.append("")
    lines += [
        "## Intended use and limits",
        "",
        "A demonstration and test model for the gosd runtime: it shows that the whole text-to-image path",
        "works, fast, on a CPU. It is not a general image generator: it knows only emoji-like subjects at",
        f"64x64, follows prompts loosely (tiny text encoder trained on {info.get('captions', '?')} short captions), may mix",
        "up similar emoji, and draws text, flags and fine detail poorly. Prompts far from emoji names give",
        "emoji-flavoured guesses. Generated images can resemble Noto emoji closely; the Apache-2.0 terms",
        "of those images apply.",
        "",
    ]
    return "\n".join(lines)


def schedule_text(tc):
    """The learning-rate schedule of a training section in words (train.lr_at)."""
    floor = tc["lr"] * tc.get("min_lr_frac", 0.0)
    text = f"AdamW {tc['lr']:g} after {tc.get('warmup', 0)} warm-up steps, cosine to {floor:g}"
    restart = tc.get("restart")
    if restart:
        text += f" by step {restart['at']}, then a second cosine from {restart['lr']:g} to {floor:g}"
    return text


def run_info(run, cfg, params):
    info = {"params": params, "seed": cfg.get("seed"), "vae_steps": cfg["vae_train"]["steps"],
            "unet_steps": cfg["unet_train"]["steps"], "unet_batch": cfg["unet_train"]["batch_size"],
            "unet_lr": schedule_text(cfg["unet_train"])}
    csv_path = os.path.join(run, "loss.csv")
    if os.path.exists(csv_path):
        last, seconds = {}, {}
        with open(csv_path) as f:
            for row in csv.DictReader(f):
                last[row["stage"]] = row
                seconds[row["stage"]] = float(row["train_seconds"] or 0)
        info["final_losses"] = ", ".join(f"{s} {r['loss']}" for s, r in last.items())
        info["train_minutes"] = round(sum(seconds.values()) / 60, 1)
    data = cfg.get("data")
    if data and os.path.exists(data):
        import numpy as np

        with np.load(data) as d:
            info["images"] = len(d["images"])
            info["captions"] = len(d["captions"])
            info.update(json.loads(str(d["meta"])))
    device = run_device(run)
    if device:
        info["device"] = device
    return info


def run_device(run):
    """What a run trained on, from its status.json ("cpu (2 threads), torch 1.13"), or None."""
    status = os.path.join(run, "status.json")
    if not os.path.exists(status):
        return None
    with open(status) as f:
        s = json.load(f)
    return f"{s.get('device', '?')}, torch {s.get('torch', '?')}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="finished training run folder (has config.json, vae.pt, unet.pt)")
    ap.add_argument("--out", default=None, help="output folder (default RUN/export)")
    ap.add_argument("--tokenizer-src", default=default_tokenizer_src(),
                    help="folder with CLIP vocab.json + merges.txt (default: third_party/clip, else the conformance kit's)")
    ap.add_argument("--scheduler", choices=["ddim", "euler"], default="ddim", help="scheduler class to write (default ddim)")
    ap.add_argument("--no-ema", action="store_true", help="export the raw instead of the EMA UNet/text-encoder weights")
    ap.add_argument("--max-mb", type=float, default=40.0, help="fail when the weights exceed this many MB (default 40)")
    ap.add_argument("--allow-test-tokenizer", action="store_true",
                    help="export even if the dataset was tokenized by tests/fake_tokenize.py (never ship that)")
    ap.add_argument("--eval", default="", metavar="JSON",
                    help="evaluation report of this model (sample.py --eval writes it) to summarise in the model card")
    ap.add_argument("--command", action="append", default=[],
                    help="a command that trained the run, listed in the model card (repeatable, in order)")
    ap.add_argument("--note", default="", help="a status paragraph put at the top of the model card")
    args = ap.parse_args(argv)
    out = args.out or os.path.join(args.run, "export")

    with open(os.path.join(args.run, "config.json")) as f:
        cfg = json.load(f)
    import train  # checkpoint loading that works on torch 1.13 and on torch >= 2.6 (weights_only default)

    vae_ck = train.load_checkpoint(os.path.join(args.run, "vae.pt"), "cpu")
    unet_ck = train.load_checkpoint(os.path.join(args.run, "unet.pt"), "cpu")
    if not (vae_ck.get("done") and unet_ck.get("done")):
        print("export: warning: the run is not finished; exporting its latest checkpoint", file=sys.stderr)
    if args.no_ema:
        states = {"unet": unet_ck["unet"], "text_encoder": unet_ck["text_encoder"]}
    else:
        ema = unet_ck["ema"]
        states = {k: {n[len(k) + 1:]: v for n, v in ema.items() if n.startswith(k + ".")} for k in ("unet", "text_encoder")}
    states["vae"] = vae_ck["model"]
    params = {k: sum(v.numel() for v in s.values()) for k, s in states.items()}
    info = run_info(args.run, cfg, params)
    if args.note:
        info["note"] = args.note
    if args.command:
        info["commands"] = args.command
    if args.eval:
        with open(args.eval) as f:
            info["eval"] = json.load(f)
    if "fake_tokenize" in str(info.get("tokenizer_cmd", "")):
        if not args.allow_test_tokenizer:
            sys.exit("export: the dataset was tokenized by the test stand-in (tests/fake_tokenize.py); its ids mean "
                     "nothing to the runtime tokenizer. Rebuild the data with the Go tokenizer, or pass --allow-test-tokenizer.")
        print("export: WARNING: test-tokenizer ids; this model only works with tests/fake_tokenize.py", file=sys.stderr)
    sizes = write_folder(out, cfg["model"], states, unet_ck["scaling_factor"], cfg["scheduler"], args.tokenizer_src,
                         args.scheduler, info, args.max_mb)
    load_folder(out)  # strict round trip through the configs just written
    total = sum(sizes.values())
    print(json.dumps({"out": out, "bytes": sizes, "total_mb": round(total / 1e6, 2), "params": params}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
