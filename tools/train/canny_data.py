#!/usr/bin/env python3
"""Canny edge maps of the dataset's images, made by the runtime's own Canny, for the ControlNet.

  python3 canny_data.py                    # data/emoji64-demo.npz -> data/emoji64-demo-canny.npz

Runs `go run ./tools/train/canny` (from the repository root; --canny-cmd overrides), which
applies diffusion/control.Canny with sdcli's default thresholds to each image exactly as
`sdcli txt2img --control-preprocess canny` does, and stores
  edges      (N, H, W) uint8, 255 on 0, row i the edges of images[i] of the dataset
  image_ids  (N,) the dataset's ids, to check the pairing
  meta       JSON: source dataset, command, thresholds, edge density
next to the dataset. train_controlnet.py reads both files.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_CANNY_CMD = "go run ./tools/train/canny"


def canny(images, cmd=DEFAULT_CANNY_CMD):
    """images: (N, H, W, 3) uint8 RGB -> ((N, H, W) uint8 edges, thresholds "low,high") via the Go program."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"want (N, H, W, 3) uint8 images, got {images.shape}")
    n, h, w, _ = images.shape
    proc = subprocess.run(shlex.split(cmd) + ["-width", str(w), "-height", str(h)], input=images.tobytes(),
                          capture_output=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"canny command {cmd!r} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    if len(proc.stdout) != n * h * w:
        raise RuntimeError(f"canny command returned {len(proc.stdout)} bytes for {n} frames of {w}x{h}")
    m = re.search(r"thresholds (\d+),(\d+)", proc.stderr.decode())
    return np.frombuffer(proc.stdout, dtype=np.uint8).reshape(n, h, w).copy(), (m.group(0).split()[1] if m else "?")


def edges_path(data_path):
    """data/x.npz -> data/x-canny.npz: where the edges of a dataset live."""
    return os.path.splitext(data_path)[0] + "-canny.npz"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(HERE, "data", "emoji64-demo.npz"), help="prepared dataset (default data/emoji64-demo.npz)")
    ap.add_argument("--out", default=None, help="output .npz (default: the dataset's name + -canny.npz)")
    ap.add_argument("--canny-cmd", default=DEFAULT_CANNY_CMD, help=f"command run from the repository root (default {DEFAULT_CANNY_CMD!r})")
    args = ap.parse_args(argv)
    out = args.out or edges_path(args.data)
    if not os.path.isfile(args.data):
        sys.exit(f"canny_data: dataset {args.data} not found (make data-demo)")
    with np.load(args.data) as d:
        images, ids = d["images"], d["image_ids"]
    edges, thresholds = canny(images, args.canny_cmd)
    density = float((edges > 0).mean())
    meta = {"source": os.path.basename(args.data), "images": len(images), "canny_cmd": args.canny_cmd,
            "thresholds": thresholds, "edge_pixel_fraction": round(density, 4),
            "note": "diffusion/control.Canny on the RGB image (as sdcli --control-preprocess canny), 255 on 0"}
    np.savez_compressed(out, edges=edges, image_ids=ids, meta=np.array(json.dumps(meta)))
    print(json.dumps({"out": out, **meta}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
