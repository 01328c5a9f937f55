#!/usr/bin/env python3
"""Reference outputs of diffusers' StableDiffusionXLControlNetPipeline for
diffusion/sdxl_controlnet_test.go (the conformance kit has no SDXL ControlNet).

The base model is the kit's sdxl-tiny (../shared/conformance/sdxl-tiny/diffusers). Its
ControlNet is made the way SDXL ControlNets start, ControlNetModel.from_unet (the UNet's
encoder half, a control-image encoder of 4 levels, zero convolutions), then every weight is
perturbed under a fixed seed and the zero-initialised ones filled, so that each matters and
none equals the UNet's; it is stored in float16 as a diffusers folder, and the reference
runs in float32 on exactly those values. The run follows the kit's SDXL pipelines: prompt
"a red apple on a table", negative "blurry", 64x64, Euler (the model's scheduler config), 6
steps, guidance 5.0, latents torch.randn((1, 4, 8, 8), generator=manual_seed(50)), plus the
control image (a circle outline, 64x64 RGB) at conditioning scale 0.8; once as is and once in
guess mode.

Writes into the folder given (default diffusion/testdata/sdxl-controlnet):
  controlnet/            config.json, diffusion_pytorch_model.safetensors (float16)
  control.png            the control image
  txt2img-plain.safetensors, txt2img-guess.safetensors (the kit's keys): init_latents,
                         stepNN.latents after each step, image (1, 3, 64, 64) in [0, 1]

Needs the CPU reference stack of ../shared/tools/refstack (diffusers 0.31 on Debian's
python3-torch); from the repository root:
  source ../refstack/env.sh && /usr/bin/python3 tools/sdxl-controlnet/reference.py
"""
import os
import sys

import torch
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KIT = os.path.join(ROOT, "..", "shared", "conformance", "sdxl-tiny", "diffusers")
sys.path.insert(0, os.path.join(ROOT, "..", "shared", "tools", "refstack"))

import precision  # noqa: E402  (torch 1.13 CPU fix-ups of the reference stack)
from diffusers import (  # noqa: E402
    ControlNetModel,
    EulerDiscreteScheduler,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLPipeline,
)
from safetensors.torch import save_file  # noqa: E402


def make_controlnet(unet, out_dir):
    torch.manual_seed(6)  # the new control-image encoder layers take torch's default initialisation
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in cn.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if float(p.abs().max()) == 0.0:  # zero convolutions and the control encoder's output
                p.copy_(0.1 * noise)
            else:
                scale = float(p.std()) if p.numel() > 1 else float(p.abs())
                p.add_(0.1 * max(scale, 1e-2) * noise)
    cn.half().save_pretrained(out_dir)
    return ControlNetModel.from_pretrained(out_dir, torch_dtype=torch.float32)


def control_image(path):
    im = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(im).ellipse((12, 10, 52, 54), outline="white", width=2)
    im.save(path)
    return im


def run(pipe, image, guess):
    init = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(50))
    steps = []

    def record(_pipe, _i, _t, kw):
        steps.append(kw["latents"].detach().clone())
        return kw

    out = pipe(prompt="a red apple on a table", negative_prompt="blurry", image=image, height=64, width=64,
               num_inference_steps=6, guidance_scale=5.0, controlnet_conditioning_scale=0.8, guess_mode=guess,
               latents=init.clone(), output_type="pt", callback_on_step_end=record,
               callback_on_step_end_tensor_inputs=["latents"]).images
    return init, steps, out


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "diffusion", "testdata", "sdxl-controlnet")
    os.makedirs(out_dir, exist_ok=True)
    precision.patch(group_norm64=True)
    base = StableDiffusionXLPipeline.from_pretrained(KIT, torch_dtype=torch.float32)
    cn = make_controlnet(base.unet, os.path.join(out_dir, "controlnet"))
    pipe = StableDiffusionXLControlNetPipeline(
        vae=base.vae, text_encoder=base.text_encoder, text_encoder_2=base.text_encoder_2,
        tokenizer=base.tokenizer, tokenizer_2=base.tokenizer_2, unet=base.unet, controlnet=cn,
        scheduler=EulerDiscreteScheduler.from_config(base.scheduler.config),
        force_zeros_for_empty_prompt=True, add_watermarker=False)
    image = control_image(os.path.join(out_dir, "control.png"))
    for case, guess in (("plain", False), ("guess", True)):
        init, steps, img = run(pipe, image, guess)
        tensors = {"init_latents": init, "image": img}
        for i, s in enumerate(steps):
            tensors[f"step{i:02d}.latents"] = s
        save_file({k: v.contiguous().float() for k, v in tensors.items()},
                  os.path.join(out_dir, f"txt2img-{case}.safetensors"))
    print(f"reference: wrote {out_dir}")


if __name__ == "__main__":
    main()
