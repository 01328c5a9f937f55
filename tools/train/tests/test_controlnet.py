"""The demo model's Canny ControlNet: parity with diffusers, training, export and the runtime.

  python3 -m unittest tests.test_controlnet -v        (from tools/train)

- parity: sdmodels.ControlNetModel and the UNet with residuals reproduce the conformance kit's
  controlnet-tiny goldens (diffusers 0.31) within 1e-4 of max|ref| (skips without the kit);
- from_unet: the demo UNet's encoder copied, zero residuals, a 64x64 hint for 16x16 latents;
"""

import json
import os
import sys
import unittest

import torch

TESTS = os.path.dirname(os.path.abspath(__file__))
TRAIN = os.path.dirname(TESTS)
sys.path.insert(0, TRAIN)

import safetensors_io as st  # noqa: E402
import sdmodels  # noqa: E402
import test_parity  # noqa: E402

KIT = test_parity.conformance_dir()
CN_KIT = os.path.join(KIT, "controlnet-tiny") if KIT else None
HAVE_CN_KIT = CN_KIT is not None and os.path.isfile(os.path.join(CN_KIT, "golden.safetensors"))


@unittest.skipUnless(HAVE_CN_KIT, "conformance kit's controlnet-tiny not found (set GOSD_CONFORMANCE)")
class ControlNetParityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(os.path.join(KIT, "manifest-v2-control-upscale.json")) as f:
            base = json.load(f)["models"]["controlnet-tiny"]["base_model"]
        cls.golden = st.load_file(os.path.join(CN_KIT, "golden.safetensors"))
        cls.unet = test_parity.load_component(os.path.join(KIT, base, "diffusers"), "unet", sdmodels.UNet2DConditionModel,
                                              "diffusion_pytorch_model.safetensors")
        with open(os.path.join(CN_KIT, "diffusers", "config.json")) as f:
            cls.cn = sdmodels.ControlNetModel(json.load(f))
        state = st.load_file(os.path.join(CN_KIT, "diffusers", "diffusion_pytorch_model.safetensors"), dtype=torch.float32)
        sdmodels.load_state_dict_strict(cls.cn, state, "controlnet-tiny")
        cls.cn.eval()
        cls.errors = {}

    def check(self, key, out):
        ref = self.golden[key]
        self.assertEqual(tuple(out.shape), tuple(ref.shape), key)
        err = test_parity.rel_err(out, ref)
        self.errors[key] = err
        self.assertLessEqual(err, test_parity.REL_TOL, f"{key}: max|diff|/max|ref| = {err:.3g}")

    @torch.no_grad()
    def test_controlnet_and_unet_with_residuals(self):
        g = self.golden
        cases = [  # (golden prefix, inputs prefix, scale, guess mode, UNet output key)
            ("cn", "cn", 1.0, False, "unet_with_control.out"),
            ("cn06", "cn", 0.6, False, "unet_with_control06.out"),
            ("cn_guess", "cn", 1.0, True, None),
            ("cn_ns", "cn_ns", 1.0, False, "unet_with_control_ns.out"),
        ]
        for prefix, inp, scale, guess, unet_key in cases:
            with self.subTest(prefix):
                x, t, ctx = g[f"{inp}.x"], g[f"{inp}.t"], g[f"{inp}.context"]
                down, mid = self.cn(x, t, ctx, g[f"{inp}.cond"], conditioning_scale=scale, guess_mode=guess)
                self.assertEqual(len(down), len([k for k in g if k.startswith(f"{prefix}.down")]))
                for i, d in enumerate(down):
                    self.check(f"{prefix}.down{i}", d)
                self.check(f"{prefix}.mid", mid)
                if unet_key:
                    self.check(unet_key, self.unet(x, t, ctx, down, mid))
        self.check("unet_without_control.out", self.unet(g["cn.x"], g["cn.t"], g["cn.context"]))

    def test_residuals_must_come_together(self):
        g = self.golden
        with self.assertRaises(ValueError):
            self.unet(g["cn.x"], g["cn.t"], g["cn.context"], mid_block_additional_residual=g["cn.mid"])

    @classmethod
    def tearDownClass(cls):
        if cls.errors and os.environ.get("PARITY_REPORT", "1") != "0":
            worst = max(cls.errors, key=cls.errors.get)
            print(f"\ncontrolnet-tiny: {len(cls.errors)} tensors, worst max|diff|/max|ref| {cls.errors[worst]:.2e} ({worst})",
                  file=sys.stderr)


class FromUNetTest(unittest.TestCase):
    def test_from_unet(self):
        with open(os.path.join(TRAIN, "config-cpu.json")) as f:
            arch = json.load(f)["model"]["unet"]
        torch.manual_seed(0)
        unet = sdmodels.build("unet", arch).eval()
        with torch.no_grad():  # make every layer matter (build() zero-initialises residual branches)
            for p in unet.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        cn = sdmodels.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64)).eval()
        self.assertEqual(cn.config["norm_num_groups"], arch["norm_num_groups"])
        self.assertEqual(cn.config["attention_head_dim"], arch["attention_head_dim"])
        self.assertEqual(set(cn.config), set(sdmodels.CONTROLNET_DEFAULTS))
        own = cn.state_dict()
        for k, v in unet.state_dict().items():
            if k.split(".")[0] in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
                self.assertTrue(torch.equal(own[k], v), k)
        zero = [k for k in own if k.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out"))]
        self.assertEqual(len(zero), 2 * (1 + 3 * 2 + 2 + 1 + 1))  # weight + bias of 10 down convs, mid, conv_out
        self.assertTrue(all(own[k].abs().max() == 0 for k in zero))

        x, t, ctx = torch.randn(2, 4, 16, 16), torch.tensor([999, 10]), torch.randn(2, 77, 96)
        cond = (torch.rand(2, 3, 64, 64) > 0.9).float()
        with torch.no_grad():
            self.assertEqual(tuple(cn.controlnet_cond_embedding(cond).shape), (2, 64, 16, 16))
            down, mid = cn(x, t, ctx, cond)
            self.assertTrue(all(d.abs().max() == 0 for d in down) and mid.abs().max() == 0)
            self.assertTrue(torch.equal(unet(x, t, ctx, down, mid), unet(x, t, ctx)))
            # A 64x64 hint on 8x8 latents does not fit the encoder: an error, not a silent broadcast.
            with self.assertRaises(RuntimeError):
                cn(torch.randn(1, 4, 8, 8), t[:1], ctx[:1], cond[:1])


if __name__ == "__main__":
    unittest.main()
