"""Parity of sdmodels.py with diffusers/transformers on the conformance kit's tiny SD models.

Builds each network from the kit's config.json, loads its safetensors weights strictly and
reproduces every tensor of golden.safetensors within max|diff| <= 1e-4 * max|ref| (float32, CPU).
This is what shows that a folder exported from these classes is a real SD model.

Run: python3 -m unittest tools/train/test_parity.py   (or: python3 tools/train/test_parity.py -v)
The kit is looked up at $GOSD_CONFORMANCE, then ../shared/conformance from the repository root;
the test skips when it is absent.
"""

import json
import os
import sys
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import safetensors_io as st  # noqa: E402
import sdmodels  # noqa: E402

REL_TOL = 1e-4


def conformance_dir():
    candidates = [os.environ.get("GOSD_CONFORMANCE", "")]
    repo = os.path.dirname(os.path.dirname(HERE))
    candidates += [os.path.join(os.path.dirname(repo), "shared", "conformance"), os.path.join(repo, "..", "shared", "conformance"),
                   "/work/shared/conformance"]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "README.md")) and os.path.isdir(os.path.join(c, "sd1-tiny")):
            return os.path.abspath(c)
    return None


KIT = conformance_dir()
RESULTS = {}  # (model, tensor) -> relative error, printed at the end for reports


def rel_err(out, ref):
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def load_component(model_dir, name, cls, weights):
    with open(os.path.join(model_dir, name, "config.json")) as f:
        cfg = json.load(f)
    model = cls(cfg)
    state = st.load_file(os.path.join(model_dir, name, weights), dtype=torch.float32)
    if name == "text_encoder":
        state = sdmodels.text_encoder_state(state)
    sdmodels.load_state_dict_strict(model, state, f"{model_dir}/{name}")
    return model.eval()


@unittest.skipIf(KIT is None, "conformance kit not found (set GOSD_CONFORMANCE)")
class ParityTest(unittest.TestCase):
    def run_model(self, tag):
        model_dir = os.path.join(KIT, tag, "diffusers")
        golden = st.load_file(os.path.join(KIT, tag, "golden.safetensors"))
        torch.manual_seed(0)

        def check(key, out):
            ref = golden[key]
            self.assertEqual(tuple(out.shape), tuple(ref.shape), key)
            err = rel_err(out, ref)
            RESULTS[(tag, key)] = err
            self.assertLessEqual(err, REL_TOL, f"{tag} {key}: max|diff|/max|ref| = {err:.3g}")

        with torch.no_grad():
            unet = load_component(model_dir, "unet", sdmodels.UNet2DConditionModel, "diffusion_pytorch_model.safetensors")
            for case in ("unet0", "unet1"):
                out = unet(golden[f"{case}.x"], golden[f"{case}.t"], golden[f"{case}.context"])
                check(f"{case}.out", out)

            vae = load_component(model_dir, "vae", sdmodels.AutoencoderKL, "diffusion_pytorch_model.safetensors")
            for case in ("vae.decode", "vae.decode2"):
                check(f"{case}.out", vae.decode(golden[f"{case}.z"]))
            mean, logvar = vae.encode(golden["vae.encode.x"])
            check("vae.encode.mean", mean)
            check("vae.encode.logvar", logvar)

            clip = load_component(model_dir, "text_encoder", sdmodels.CLIPTextModel, "model.safetensors")
            out = clip(golden["clip.ids"])
            check("clip.last_hidden_state", out["last_hidden_state"])
            check("clip.penultimate_hidden_state", out["hidden_states"][-2])
            check("clip.pooled", out["pooler_output"])

    def test_sd1_tiny(self):
        self.run_model("sd1-tiny")

    def test_sd2_tiny_v(self):
        self.run_model("sd2-tiny-v")

    @classmethod
    def tearDownClass(cls):
        if RESULTS and os.environ.get("PARITY_REPORT", "1") != "0":
            print("\nmax|diff| / max|ref| per golden tensor (tolerance %.0e):" % REL_TOL, file=sys.stderr)
            for (tag, key), err in sorted(RESULTS.items()):
                print(f"  {tag:11s} {key:32s} {err:.2e}", file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
