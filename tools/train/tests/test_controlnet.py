"""The demo model's Canny ControlNet: parity with diffusers, training, export and the runtime.

  python3 -m unittest tests.test_controlnet -v        (from tools/train)

- parity: sdmodels.ControlNetModel and the UNet with residuals reproduce the conformance kit's
  controlnet-tiny goldens (diffusers 0.31) within 1e-4 of max|ref| (skips without the kit);
- from_unet: the demo UNet's encoder copied, zero residuals, a 64x64 hint for 16x16 latents;
- canny_data.py: the Go Canny over a dataset (skips without go);
- a smoke training of a few steps on a few synthetic images with a freshly initialised tiny base
  model, resume and time budget, export and strict reload;
- the evaluation's edge metric and drawn shapes, and eval_controlnet.py through sdcli;
- make demo-control without the ControlNet: a clear message and a failure;
- the runtime: sdcli loads the exported ControlNet and draws, with a ControlNet whose every
  weight matters, the image PyTorch draws (skips without a built build/sdcli, go or the kit's
  tokenizer files).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

TESTS = os.path.dirname(os.path.abspath(__file__))
TRAIN = os.path.dirname(TESTS)
sys.path.insert(0, TRAIN)

import canny_data  # noqa: E402
import eval_controlnet  # noqa: E402
import export  # noqa: E402
import export_controlnet  # noqa: E402
import prepare_data  # noqa: E402
import safetensors_io as st  # noqa: E402
import sampling  # noqa: E402
import sdmodels  # noqa: E402
import test_parity  # noqa: E402
import train  # noqa: E402
import train_controlnet  # noqa: E402
from tests import test_pipeline  # noqa: E402

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


REPO = os.path.dirname(os.path.dirname(TRAIN))
SDCLI = os.environ.get("GOSD_SDCLI", os.path.join(REPO, "build", "sdcli"))
HAVE_GO = shutil.which("go") is not None
TOKENIZER_SRC = export.default_tokenizer_src()

# A tiny SD of the demo model's shape (3 levels, 4x VAE, 64x64 images, 16x16 latents).
TINY = {
    "unet": {"block_out_channels": [32, 32, 64], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1,
             "norm_num_groups": 8, "attention_head_dim": [2, 2, 2], "cross_attention_dim": 32, "use_linear_projection": True,
             "sample_size": 16},
    "vae": {"block_out_channels": [16, 16, 32], "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3, "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64},
    "text_encoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
}
SCHED = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
         "prediction_type": "epsilon", "timestep_spacing": "leading", "steps_offset": 1}


def perturb(model, std, seed):
    """Adds N(0, std) to every weight, so that zero-initialised layers matter in comparisons."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def tiny_base(out):
    """A freshly initialised (and perturbed) tiny SD written as a diffusers folder."""
    torch.manual_seed(0)
    models = {k: perturb(sdmodels.build(k, TINY[k]), 0.02, i) for i, k in enumerate(("unet", "vae", "text_encoder"))}
    export.write_folder(out, TINY, {k: m.state_dict() for k, m in models.items()}, 0.5, SCHED, TOKENIZER_SRC)


def stand_in_edges(images):
    """Test-only edge maps (a thresholded pixel gradient), so that training tests need no Go."""
    gray = images.astype(np.float32).mean(axis=3)
    gx = np.abs(np.diff(gray, axis=2, prepend=gray[:, :, :1]))
    gy = np.abs(np.diff(gray, axis=1, prepend=gray[:, :1]))
    return ((gx + gy) > 40).astype(np.uint8) * 255


@unittest.skipUnless(HAVE_GO, "go not on PATH")
class CannyDataTest(unittest.TestCase):
    def test_canny_data(self):
        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "d.npz")
            test_pipeline.synthetic_dataset(data, n=6)
            self.assertEqual(canny_data.main(["--data", data]), 0)
            with np.load(canny_data.edges_path(data)) as e, np.load(data) as d:
                edges, meta = e["edges"], json.loads(str(e["meta"]))
                self.assertEqual(edges.shape, d["images"].shape[:3])
                self.assertEqual(list(e["image_ids"]), list(d["image_ids"]))
            self.assertEqual(meta["thresholds"], "100,200")
            self.assertEqual(set(np.unique(edges)), {0, 255})
            for e in edges:  # a disc on white: a ring of edges, nothing at the centre or the corners
                self.assertTrue(e[32, :].any() and e[32, 32] == 0 and e[0, 0] == 0 and e[63, 63] == 0)
            with self.assertRaises(ValueError):
                canny_data.canny(np.zeros((2, 8, 8), np.uint8))


class EvalTest(unittest.TestCase):
    def test_edge_agreement(self):
        ref = np.zeros((16, 16), bool)
        ref[4:12, 8] = True
        shifted = np.roll(ref, 1, axis=1)
        cases = [  # (prediction, tolerance, precision, recall)
            (ref, 0, 1.0, 1.0),
            (shifted, 0, 0.0, 0.0),
            (shifted, 1, 1.0, 1.0),
            (np.roll(ref, 2, axis=1), 1, 0.0, 0.0),
            (np.zeros_like(ref), 1, 0.0, 0.0),
            (ref | np.roll(ref, 5, axis=1), 1, 0.5, 1.0),
        ]
        for i, (pred, tol, p, r) in enumerate(cases):
            with self.subTest(i):
                s = eval_controlnet.scores([eval_controlnet.edge_agreement(pred, ref, tol)])
                self.assertEqual((s["precision"], s["recall"]), (p, r))
                self.assertAlmostEqual(s["f1"], round(2 * p * r / (p + r), 4) if p + r else 0.0)

    def test_shapes_are_drawn_ones(self):
        from PIL import Image

        for name in eval_controlnet.SHAPES:
            with Image.open(os.path.join(TRAIN, "shapes", f"{name}.png")) as im:
                self.assertTrue(np.array_equal(np.asarray(im.convert("RGB")), eval_controlnet.draw_shape(name)), name)
        with self.assertRaises(ValueError):
            eval_controlnet.draw_shape("hexagon")

    @unittest.skipUnless(shutil.which("make"), "no make")
    def test_demo_control_without_controlnet(self):
        r = subprocess.run(["make", "-C", REPO, "--no-print-directory", "demo-control", "CONTROLNET=/nonexistent/cn"],
                           capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no ControlNet at /nonexistent/cn yet", r.stderr)
        self.assertIn("make -C tools/train canny controlnet export-controlnet", r.stderr)


@unittest.skipIf(TOKENIZER_SRC is None, "no CLIP vocab.json/merges.txt (third_party/clip or the conformance kit)")
class SmokeTrainTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp()
        cls.base = os.path.join(cls.tmp, "base")
        tiny_base(cls.base)
        cls.data = os.path.join(cls.tmp, "data.npz")
        test_pipeline.synthetic_dataset(cls.data)
        with np.load(cls.data) as d:
            cls.edges = stand_in_edges(d["images"])
            ids = d["image_ids"]
        cls.edges_path = os.path.join(cls.tmp, "edges.npz")
        np.savez_compressed(cls.edges_path, edges=cls.edges, image_ids=ids, meta=np.array(json.dumps({"thresholds": "test"})))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def train(self, run, *extra):
        return train_controlnet.main(["--run", run, "--base", self.base, "--data", self.data, "--edges", self.edges_path,
                                      "--quiet", "--threads", "1", *extra])

    def test_train_resume_export(self):
        run = os.path.join(self.tmp, "run")
        self.assertEqual(self.train(run, "--smoke"), 0)
        with open(os.path.join(run, "status.json")) as f:
            self.assertTrue(json.load(f)["done"])
        self.assertTrue(os.path.isfile(os.path.join(run, "samples", "final.png")))
        with open(os.path.join(run, "loss.csv")) as f:
            rows = f.read().splitlines()
        self.assertEqual(len(rows), 1 + 3, rows)  # header + one row per smoke step
        ck = train.load_checkpoint(os.path.join(run, "controlnet.pt"), "cpu")
        self.assertEqual(ck["step"], 3)
        self.assertEqual(ck["config"]["conditioning_embedding_out_channels"], [16, 32, 64])
        # The zero convolutions have moved off zero: the ControlNet was trained.
        self.assertGreater(ck["controlnet"]["controlnet_mid_block.weight"].abs().max().item(), 0)
        # Resuming a finished run does nothing and still succeeds.
        self.assertEqual(train_controlnet.main(["--run", run, "--resume", "--quiet"]), 0)

        out = os.path.join(self.tmp, "export")
        self.assertEqual(export_controlnet.main(["--run", run, "--out", out]), 0)
        with open(os.path.join(out, "config.json")) as f:
            cfg = json.load(f)
        self.assertEqual(cfg["_class_name"], "ControlNetModel")
        self.assertEqual(set(cfg) - {"_diffusers_version"}, set(sdmodels.CONTROLNET_DEFAULTS))
        self.assertEqual(cfg["block_out_channels"], TINY["unet"]["block_out_channels"])
        header, _, _ = st.read_header(os.path.join(out, export_controlnet.WEIGHTS))
        self.assertTrue(all(v["dtype"] == "F16" for v in header.values()))
        with open(os.path.join(out, "README.md")) as f:
            card = f.read()
        self.assertIn("Apache License 2.0", card)
        self.assertIn("3 steps x batch 4", card)
        with open(os.path.join(TRAIN, "config-controlnet.json")) as f:
            self.assertIn(f"({json.load(f)['smoke']['limit_images']} Noto Color Emoji", card)  # the images trained on

        # The folder holds the EMA weights, rounded to fp16, and reloads strictly.
        loaded = export_controlnet.load_folder(out).state_dict()
        ema = {k[len("controlnet."):]: v for k, v in ck["ema"].items()}
        self.assertEqual(set(loaded), set(ema))
        for k, v in ema.items():
            self.assertTrue(torch.equal(loaded[k], v.half().float()), k)

        # Outputs survive the fp16 round trip, with every weight perturbed so that every path matters.
        cn = perturb(sdmodels.ControlNetModel(ck["config"]), 0.02, 5).eval()
        out2 = os.path.join(self.tmp, "export2")
        export_controlnet.write_folder(out2, cn.config, cn.state_dict())
        loaded = export_controlnet.load_folder(out2)
        x, t, ctx = torch.randn(2, 4, 16, 16), torch.tensor([900, 20]), torch.randn(2, 77, 32)
        cond = torch.from_numpy(self.edges[:2]).float().div(255)[:, None].expand(-1, 3, -1, -1)
        with torch.no_grad():
            (down_a, mid_a), (down_b, mid_b) = cn(x, t, ctx, cond), loaded(x, t, ctx, cond)
        for u, v in zip(down_a + [mid_a], down_b + [mid_b]):
            self.assertLess((u - v).abs().max().item() / u.abs().max().item(), 1e-2)

        if os.access(SDCLI, os.X_OK) and HAVE_GO:
            sheet = os.path.join(self.tmp, "eval.png")
            self.assertEqual(eval_controlnet.main(["--sdcli", SDCLI, "--controlnet", out, "--model", self.base, "--no-emoji",
                                                   "--seeds", "0", "--steps", "2", "--threads", "1", "--out", sheet]), 0)
            with open(os.path.join(self.tmp, "eval-eval.json")) as f:
                report = json.load(f)
            self.assertEqual(report["summary"]["groups"]["drawn shapes"]["images"], 4)
            self.assertEqual(len(report["images"]), 4)
            self.assertTrue(os.path.isfile(sheet))

    def test_time_budget_and_resume(self):
        run = os.path.join(self.tmp, "budget")
        self.assertEqual(self.train(run, "--smoke", "--max-minutes", "1e-9"), train_controlnet.EXIT_INCOMPLETE)
        self.assertEqual(train.load_checkpoint(os.path.join(run, "controlnet.pt"), "cpu")["step"], 0)
        self.assertEqual(train_controlnet.main(["--run", run, "--resume", "--quiet"]), 0)

    def test_base_from_a_training_run(self):
        """--base may be a train.py run folder (its EMA weights) instead of an exported folder."""
        base_run = os.path.join(self.tmp, "base-run")
        self.assertEqual(train.main(["--smoke", "--config", os.path.join(TRAIN, "config-cpu.json"), "--run", base_run,
                                     "--data", self.data, "--quiet", "--threads", "1"]), 0)
        run = os.path.join(self.tmp, "from-run")
        self.assertEqual(train_controlnet.main(["--run", run, "--base", base_run, "--data", self.data, "--edges", self.edges_path,
                                                "--smoke", "--quiet", "--threads", "1"]), 0)
        ck = train.load_checkpoint(os.path.join(run, "controlnet.pt"), "cpu")
        with open(os.path.join(TRAIN, "config-cpu.json")) as f:
            self.assertEqual(ck["config"]["block_out_channels"], json.load(f)["model"]["unet"]["block_out_channels"])

    def test_bad_inputs(self):
        with self.assertRaises(SystemExit):  # edges of another dataset
            other = os.path.join(self.tmp, "other.npz")
            np.savez_compressed(other, edges=self.edges[:3], image_ids=np.array(["a", "b", "c"]))
            self.train(os.path.join(self.tmp, "bad"), "--smoke", "--edges", other)
        with self.assertRaises(SystemExit):  # not a model
            train_controlnet.main(["--run", os.path.join(self.tmp, "bad2"), "--base", self.tmp, "--smoke", "--quiet"])

    @unittest.skipUnless(os.access(SDCLI, os.X_OK) and HAVE_GO, "no built sdcli (go build -o build/sdcli ./cmd/sdcli) or no go")
    def test_runtime_matches_pytorch(self):
        """The exported ControlNet in sdcli draws the image the PyTorch pipeline draws (2/255 per pixel)."""
        base = export.load_folder(self.base)
        torch.manual_seed(0)  # the control embedding's default initialisation
        cn = perturb(sdmodels.ControlNetModel.from_unet(base["unet"], (16, 32, 64)), 0.1, 7).eval()
        out = os.path.join(self.tmp, "cn-random")
        export_controlnet.write_folder(out, cn.config, cn.state_dict())
        cn = export_controlnet.load_folder(out)  # the fp16 weights the runtime gets
        control = os.path.join(self.tmp, "control.png")
        from PIL import Image

        Image.fromarray(self.edges[1]).save(control)
        prompt, seed, steps = "a red disc", 3, 8
        png = os.path.join(self.tmp, "sdcli.png")
        r = subprocess.run([SDCLI, "txt2img", "--lib", os.path.dirname(SDCLI), "--device", "cpu", "--threads", "1", "-m", self.base,
                            "--controlnet", out, "--control-image", control, "-p", prompt, "--seed", str(seed),
                            "--steps", str(steps), "--cfg", "5", "--sampler", "ddim", "-W", "64", "-H", "64", "-o", png],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        with Image.open(png) as im:
            got = np.asarray(im.convert("RGB"), dtype=np.int32)

        ids = torch.from_numpy(prepare_data.tokenize(["", prompt], prepare_data.DEFAULT_TOKENIZER_CMD).astype(np.int64))
        with torch.no_grad():
            ctx = base["text_encoder"](ids)["last_hidden_state"]
            cond = torch.from_numpy(self.edges[1]).float().div(255)[None, None].expand(1, 3, -1, -1)
            g = torch.Generator().manual_seed(seed)
            lat = sampling.sample(train_controlnet.Controlled(base["unet"], cn, cond), ctx[1:], ctx[:1], base["scheduler"],
                                  steps, 5.0, "ddim", g, (4, 16, 16))
            ref = sampling.to_uint8(sampling.decode(base["vae"], lat, 0.5))[0].astype(np.int32)
            plain = sampling.to_uint8(sampling.decode(base["vae"], sampling.sample(
                base["unet"], ctx[1:], ctx[:1], base["scheduler"], steps, 5.0, "ddim", torch.Generator().manual_seed(seed),
                (4, 16, 16)), 0.5))[0].astype(np.int32)
        self.assertGreater(np.abs(ref - plain).max(), 20, "the ControlNet must change the picture for this test to mean anything")
        print(f"\nsdcli vs PyTorch: max|diff| {np.abs(got - ref).max()}/255; ControlNet effect {np.abs(ref - plain).max()}/255", file=sys.stderr)
        self.assertLessEqual(np.abs(got - ref).max(), 2, "sdcli vs PyTorch, max |diff| in 1/255")


if __name__ == "__main__":
    unittest.main()
