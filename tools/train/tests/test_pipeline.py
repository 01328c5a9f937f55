"""End-to-end checks of the training tools on CPU, in seconds.

  python3 -m unittest discover -s tools/train -p 'test_*.py'

- export of a freshly initialised model at the real config: a diffusers folder that reloads
  strictly through sdmodels.py, gives the same outputs (fp16 rounding aside) and fits 40 MB;
- prepare_data.py on a few emoji (skips without the npm packages in tools/train/data);
- train.py --smoke, export.py and sample.py on a small synthetic dataset.
Tokenization in these tests uses tests/fake_tokenize.py, a hashed stand-in, never the real thing.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch
from PIL import Image

TESTS = os.path.dirname(os.path.abspath(__file__))
TRAIN = os.path.dirname(TESTS)
sys.path.insert(0, TRAIN)

import export  # noqa: E402
import safetensors_io as st  # noqa: E402
import sample  # noqa: E402
import sdmodels  # noqa: E402
import train  # noqa: E402

FAKE_TOKENIZER = f"{sys.executable} {os.path.join(TESTS, 'fake_tokenize.py')}"
TOKENIZER_SRC = export.default_tokenizer_src()


def load_config():
    with open(os.path.join(TRAIN, "config.json")) as f:
        return json.load(f)


def synthetic_dataset(path, n=24, seed=0):
    """An .npz with prepare_data.py's schema: coloured discs on white, two captions each."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    images, captions, ids_of = [], [], {}
    colours = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (240, 200, 30)}
    names = list(colours)
    for i in range(n):
        c = names[i % len(names)]
        r = 10 + 4 * (i // len(names)) % 18
        img = np.full((64, 64, 3), 255, np.uint8)
        img[(yy - 32) ** 2 + (xx - 32) ** 2 < r * r] = colours[c]
        images.append(img)
        captions.append([f"a {c} disc {i}", f"{c} circle"])
    flat = sorted({c for cs in captions for c in cs})
    heldout = ["a red disc", "a blue ball"]
    all_ids = subprocess.run(FAKE_TOKENIZER.split(), input="\n".join([""] + heldout + flat) + "\n", capture_output=True,
                             text=True, check=True).stdout.splitlines()
    all_ids = np.array([json.loads(x) for x in all_ids], dtype=np.int32)
    offsets, pairs = [0], []
    for cs in captions:
        pairs += [flat.index(c) for c in cs]
        offsets.append(len(pairs))
    np.savez_compressed(
        path, images=np.stack(images), image_ids=np.array([f"X{i}" for i in range(n)]),
        subcategory=np.array(["disc"] * n), labels=np.array([cs[0] for cs in captions]),
        image_weight=np.ones(n, np.float32), captions=np.array(flat), caption_ids=all_ids[1 + len(heldout):],
        pair_offsets=np.array(offsets, np.int32), pair_captions=np.array(pairs, np.int32), empty_ids=all_ids[0],
        heldout=np.array(heldout), heldout_ids=all_ids[1:1 + len(heldout)], meta=np.array(json.dumps({"synthetic": True})))


@unittest.skipIf(TOKENIZER_SRC is None, "no CLIP vocab.json/merges.txt (third_party/clip or the conformance kit)")
class ExportTest(unittest.TestCase):
    def test_fresh_model_round_trip(self):
        cfg = load_config()
        torch.manual_seed(0)
        models = {k: sdmodels.build(k, cfg["model"][k]).eval() for k in ("unet", "vae", "text_encoder")}
        # Break the zero initialisation so the comparison below sees every layer.
        with torch.no_grad():
            for m in models.values():
                for p in m.parameters():
                    p.add_(torch.randn_like(p) * 0.02)
        states = {k: m.state_dict() for k, m in models.items()}
        with tempfile.TemporaryDirectory() as out:
            sizes = export.write_folder(out, cfg["model"], states, 0.5, cfg["scheduler"], TOKENIZER_SRC,
                                        card={"params": {k: sdmodels.param_count(m) for k, m in models.items()}})
            self.assertLessEqual(sum(sizes.values()), 40e6, sizes)
            total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
            self.assertLessEqual(total, 40e6, "whole folder incl. tokenizer")
            for f in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                      "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
                      "tokenizer/special_tokens_map.json", "scheduler/scheduler_config.json", "README.md"):
                self.assertTrue(os.path.isfile(os.path.join(out, f)), f)
            header, _, _ = st.read_header(os.path.join(out, "text_encoder", "model.safetensors"))
            self.assertTrue(all(k.startswith("text_model.") for k in header))
            self.assertTrue(all(v["dtype"] == "F16" for v in header.values()))
            with open(os.path.join(out, "vae", "config.json")) as f:
                self.assertEqual(json.load(f)["scaling_factor"], 0.5)
            with open(os.path.join(out, "model_index.json")) as f:
                index = json.load(f)
            self.assertEqual(index["unet"], ["diffusers", "UNet2DConditionModel"])

            loaded = export.load_folder(out)
            ids = torch.tensor([[49406, 320, 736, 3055, 49407] + [49407] * 72])
            x = torch.randn(2, 4, 16, 16)
            img = torch.rand(1, 3, 64, 64) * 2 - 1
            ctx = torch.randn(2, 77, 96)
            t = torch.tensor([10, 900])
            with torch.no_grad():
                for kind, a, b in [
                    ("text_encoder", models["text_encoder"](ids)["last_hidden_state"], loaded["text_encoder"](ids)["last_hidden_state"]),
                    ("unet", models["unet"](x, t, ctx), loaded["unet"](x, t, ctx)),
                    ("vae", models["vae"].decode(x[:1]), loaded["vae"].decode(x[:1])),
                    ("vae.encode", models["vae"].encode(img)[0], loaded["vae"].encode(img)[0]),
                ]:
                    err = ((a - b).abs().max() / a.abs().max()).item()
                    self.assertLess(err, 1e-2, f"{kind}: fp16 round trip error {err}")

    def test_architecture_budget(self):
        cfg = load_config()
        n = sum(sdmodels.param_count(sdmodels.build(k, cfg["model"][k])) for k in ("unet", "vae", "text_encoder"))
        self.assertLessEqual(2 * n, 39e6, f"{n} parameters do not fit 40 MB in fp16 with the tokenizer files")


@unittest.skipUnless(os.path.isdir(os.path.join(TRAIN, "data", "node_modules", "emojibase-data")),
                     "npm packages not installed (make -C tools/train data-install)")
class PrepareDataTest(unittest.TestCase):
    def test_prepare_subset(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "d.npz")
            subprocess.run([sys.executable, os.path.join(TRAIN, "prepare_data.py"), "--limit", "30", "--out", out,
                            "--tokenizer-cmd", FAKE_TOKENIZER], check=True, capture_output=True)
            with np.load(out) as d:
                self.assertEqual(d["images"].shape, (30, 64, 64, 3))
                self.assertEqual(d["caption_ids"].shape[1], 77)
                self.assertEqual(len(d["pair_offsets"]), 31)
                caps = {str(c) for c in d["captions"]}
                with open(os.path.join(TRAIN, "heldout_prompts.json")) as f:
                    held = [p["prompt"] for p in json.load(f)["prompts"]]
                self.assertFalse(caps & set(held), "held-out prompts leaked into the captions")
                self.assertEqual([str(s) for s in d["heldout"]], held)
                self.assertIn("grinning face", caps)
                # white background: corners of every image are (near) white
                self.assertGreater(d["images"][:, 0, 0].min(), 200)

    def test_prepare_subjects(self):
        with open(os.path.join(TRAIN, "subjects.json")) as f:
            subjects = json.load(f)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "d.npz")
            subprocess.run([sys.executable, os.path.join(TRAIN, "prepare_data.py"), "--subjects",
                            os.path.join(TRAIN, "subjects.json"), "--out", out, "--tokenizer-cmd", FAKE_TOKENIZER],
                           check=True, capture_output=True)
            with np.load(out) as d:
                subcats = [str(s) for s in d["subcategory"]]
                ids = [str(s) for s in d["image_ids"]]
                labels = {str(s) for s in d["labels"]}
                caps = {str(c) for c in d["captions"]}
                with open(os.path.join(TRAIN, "heldout_prompts.json")) as f:
                    held = json.load(f)["prompts"]
            self.assertLessEqual(len(ids), sum(subjects["subcategories"].values()))
            self.assertGreater(len(ids), 350)
            for s, cap in subjects["subcategories"].items():
                self.assertLessEqual(subcats.count(s), cap, s)
            self.assertFalse(labels & set(subjects["exclude"]))
            self.assertFalse([h for h in ids if any(t in h for t in ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"))],
                             "skin-tone variants in the subject set")
            self.assertIn("a red apple", caps)
            self.assertIn("a picture of a red apple", caps)
            self.assertFalse(caps & {h["prompt"] for h in held}, "held-out prompts leaked into the captions")
            for h in held:  # every named held-out emoji is a trained subject
                if h["id"]:
                    self.assertIn(h["id"], ids, h["prompt"])


class SmokeTest(unittest.TestCase):
    def test_train_export_sample(self):
        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "data.npz")
            synthetic_dataset(data)
            run = os.path.join(tmp, "run")
            rc = train.main(["--smoke", "--run", run, "--data", data, "--quiet", "--threads", "2"])
            self.assertEqual(rc, 0)
            with open(os.path.join(run, "status.json")) as f:
                self.assertTrue(json.load(f)["done"])
            self.assertTrue(os.path.isfile(os.path.join(run, "samples", "final.png")))
            with open(os.path.join(run, "loss.csv")) as f:
                rows = f.read().splitlines()
            self.assertEqual(rows[0].split(",")[0], "stage")
            self.assertGreater(len(rows), 4)

            # Resuming a finished run does nothing and still succeeds.
            self.assertEqual(train.main(["--run", run, "--resume", "--quiet"]), 0)

            if TOKENIZER_SRC is not None:
                out = os.path.join(tmp, "export")
                self.assertEqual(export.main(["--run", run, "--out", out]), 0)
                png = os.path.join(tmp, "s.png")
                heldout = os.path.join(tmp, "heldout.json")
                with open(heldout, "w") as f:
                    json.dump({"prompts": [{"prompt": "a red disc", "id": "X0", "subcategory": "disc"},
                                           {"prompt": "a blue ball", "id": None, "subcategory": None}]}, f)
                self.assertEqual(sample.main(["--model", out, "--heldout", "--heldout-file", heldout, "--data", data,
                                              "--eval", "--steps", "2", "--out", png, "--save-each", tmp]), 0)
                self.assertTrue(os.path.isfile(png))
                with Image.open(os.path.join(tmp, "001-seed0.png")) as im:
                    self.assertEqual(im.size, (64, 64))
                report = os.path.join(tmp, "s-eval.json")
                with open(report) as f:
                    summary = json.load(f)["summary"]

                # The model card quotes the evaluation it is given.
                self.assertEqual(export.main(["--run", run, "--out", out, "--eval", report,
                                              "--command", "python3 train.py --run r", "--command", "python3 export.py"]), 0)
                with open(os.path.join(out, "README.md")) as f:
                    card = f.read()
                self.assertIn("## Evaluation", card)
                self.assertIn(summary["id_or_subcategory"], card)
                self.assertIn("```sh\npython3 train.py --run r\npython3 export.py\n```", card)

    def test_time_budget_and_resume(self):
        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "data.npz")
            synthetic_dataset(data)
            run = os.path.join(tmp, "run")
            # A budget already spent: checkpoint at step 0 and exit 75, then finish with --resume.
            self.assertEqual(train.main(["--smoke", "--run", run, "--data", data, "--quiet", "--max-minutes", "1e-9"]),
                             train.EXIT_INCOMPLETE)
            self.assertTrue(os.path.isfile(os.path.join(run, "vae.pt")))
            self.assertEqual(train.main(["--run", run, "--resume", "--quiet"]), 0)

    def test_extend_a_finished_run(self):
        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "data.npz")
            synthetic_dataset(data)
            run = os.path.join(tmp, "run")
            self.assertEqual(train.main(["--smoke", "--run", run, "--data", data, "--quiet"]), 0)
            with open(os.path.join(run, "config.json")) as f:
                cfg = json.load(f)
            done = cfg["unet_train"]["steps"]
            cfg["unet_train"].update(steps=done + 2, restart={"at": done, "lr": 1e-4})
            longer = os.path.join(tmp, "longer.json")
            with open(longer, "w") as f:
                json.dump(cfg, f)
            self.assertEqual(train.main(["--run", run, "--resume", "--extend", "--config", longer, "--quiet"]), 0)
            ck = train.load_checkpoint(os.path.join(run, "unet.pt"), "cpu")
            self.assertEqual(ck["step"], done + 2)
            self.assertTrue(ck["done"])

            # Another model is a new run, not an extension; so is --extend without a run.
            cfg["model"]["unet"]["layers_per_block"] += 1
            with open(longer, "w") as f:
                json.dump(cfg, f)
            with self.assertRaises(SystemExit):
                train.main(["--run", run, "--resume", "--extend", "--config", longer, "--quiet"])
            with self.assertRaises(SystemExit):
                train.main(["--run", os.path.join(tmp, "none"), "--extend", "--config", longer, "--quiet"])


class ScheduleTest(unittest.TestCase):
    def test_restart(self):
        tc = {"steps": 300, "lr": 1e-3, "warmup": 10, "min_lr_frac": 0.1}
        plain = [train.lr_at(s, tc) for s in range(300)]
        self.assertAlmostEqual(plain[0], 1e-4)
        self.assertAlmostEqual(plain[-1], 1e-4, delta=1e-7)
        longer = dict(tc, steps=400, restart={"at": 300, "lr": 5e-4})
        # The first 300 steps are unchanged; then a second cosine from 5e-4 down to the same floor.
        self.assertEqual([train.lr_at(s, longer) for s in range(300)], plain)
        self.assertAlmostEqual(train.lr_at(300, longer), 5e-4)
        self.assertAlmostEqual(train.lr_at(350, longer), (5e-4 + 1e-4) / 2)
        self.assertAlmostEqual(train.lr_at(400, longer), 1e-4)


if __name__ == "__main__":
    unittest.main()
