#!/usr/bin/python3
"""Makes the reference data of package control's tests with OpenCV.

Run with Debian's Python and OpenCV (apt-get install python3-opencv), from this folder:

    /usr/bin/python3 make_canny.py

It writes small input images, what cv2.Canny and cv2.cvtColor(RGB2GRAY) make of them,
and cases.txt, which lists them for canny_test.go. Colour arrays are in RGB order, as
ControlNet's annotator and diffusers' example hold them (PIL images turned into numpy
arrays); cv2.imwrite wants BGR, so they are converted only to be written.
"""
import os

import cv2
import numpy as np

rng = np.random.default_rng(20261202)
cases = []


def write(name, arr):
    """Writes arr (H×W gray, H×W×3 RGB or H×W×4 RGBA) as name.png."""
    if arr.ndim == 3 and arr.shape[2] == 3:
        out = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    elif arr.ndim == 3:
        out = cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA)
    else:
        out = arr
    assert cv2.imwrite(name + ".png", out)
    return name + ".png"


def canny(name, arr, thresholds):
    """Stores arr and its edges at each (low, high)."""
    src = write(name, arr)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = np.ascontiguousarray(arr[:, :, :3])  # as PIL's convert("RGB"): alpha dropped
    for low, high in thresholds:
        edges = cv2.Canny(arr, low, high)
        out = write("%s_canny_%d_%d" % (name, low, high), edges)
        cases.append("canny %s %d %d %s" % (src, low, high, out))
    if arr.ndim == 3:
        gray = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
        out = write(name + "_gray", gray)
        cases.append("gray %s %s" % (src, out))
        edges = cv2.Canny(gray, 100, 200)
        edges_out = write("%s_gray_canny_100_200" % name, edges)
        cases.append("canny %s 100 200 %s" % (out, edges_out))


# cvtColor's RGB2GRAY on 8-bit images is fixed point: the weights 0.299, 0.587 and 0.114
# scaled by 2^15 and rounded (9798, 19235, 3735, summing to 2^15), the sum rounded half
# up (a 2^14 scale would differ on 43864 colours). Check this for every colour, so that
# the Go formula is known exact beyond the sample images.
v = np.arange(1 << 24, dtype=np.uint32)
every = np.stack([v >> 16, (v >> 8) & 255, v & 255], axis=1).astype(np.uint8).reshape(4096, 4096, 3)
r, g, b = (every[..., c].astype(np.uint32) for c in range(3))
want = ((r * 9798 + g * 19235 + b * 3735 + 16384) >> 15).astype(np.uint8)
assert np.array_equal(cv2.cvtColor(every, cv2.COLOR_RGB2GRAY), want), "RGB2GRAY is not the 15-bit formula"
del v, every, r, g, b, want

# cv2.Canny floors its thresholds (so the Go API takes integers) and swaps them when
# low > high.
probe = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
assert np.array_equal(cv2.Canny(probe, 100.9, 200.5), cv2.Canny(probe, 100, 200))
assert np.array_equal(cv2.Canny(probe, -0.5, 30), cv2.Canny(probe, -1, 30))
assert np.array_equal(cv2.Canny(probe, 200, 100), cv2.Canny(probe, 100, 200))

default = [(100, 200)]
several = [(100, 200), (20, 60), (200, 100), (0, 0)]

# Shapes: flat colours with edges at every angle, some seen by only one channel (red
# against a green of about the same luma), antialiased and not.
shapes = np.full((64, 64, 3), 128, np.uint8)
cv2.rectangle(shapes, (5, 6), (25, 20), (255, 0, 0), -1)
cv2.rectangle(shapes, (26, 6), (40, 20), (0, 128, 0), -1)
cv2.circle(shapes, (45, 42), 14, (20, 40, 230), -1, cv2.LINE_AA)
cv2.line(shapes, (2, 60), (60, 30), (255, 255, 255), 1)
cv2.line(shapes, (3, 25), (20, 58), (0, 0, 0), 2, cv2.LINE_AA)
cv2.fillPoly(shapes, [np.array([[50, 2], [62, 20], [44, 24]])], (250, 220, 10))
canny("shapes", shapes, several)

# Noise, at an odd size: every direction and magnitude, ties between neighbours.
canny("noise", rng.integers(0, 256, (47, 63, 3), dtype=np.uint8), several + [(-5, 30), (1000, 2000)])

# Gradients: ramps whose magnitudes sit near the thresholds, and a step.
y, x = np.mgrid[0:33, 0:40].astype(np.float64)
grad = np.stack([x * 6.3, y * 7.7, np.hypot(x - 20, y - 16) * 9], axis=2)
grad[20:, 25:] += 60
canny("gradient", np.clip(grad, 0, 255).astype(np.uint8), several)

# An emoji-like face on a transparent background (its hidden colour is noise, which the
# edges show: alpha is dropped, not composited).
face = np.zeros((72, 72, 4), np.uint8)
face[..., :3] = rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)
cv2.circle(face, (36, 36), 30, (255, 204, 51, 255), -1, cv2.LINE_AA)
cv2.ellipse(face, (25, 28), (4, 7), 0, 0, 360, (60, 40, 20, 255), -1, cv2.LINE_AA)
cv2.ellipse(face, (47, 28), (4, 7), 0, 0, 360, (60, 40, 20, 255), -1, cv2.LINE_AA)
cv2.ellipse(face, (36, 42), (17, 13), 0, 15, 165, (150, 50, 30, 255), 3, cv2.LINE_AA)
canny("emoji", face, default)

# Smooth blobs, large enough for OpenCV to split Canny into strips across threads:
# long chains of weak pixels that hysteresis follows from strong ones.
blobs = rng.normal(0, 1, (190, 257, 3))
blobs = cv2.GaussianBlur(blobs, (0, 0), 6)
blobs = np.clip(128 + blobs / blobs.std() * 60, 0, 255).astype(np.uint8)
canny("blobs", blobs, [(100, 200), (30, 90)])

# A single-channel image: cv2.Canny on gray, no channel to choose.
gray = cv2.GaussianBlur(rng.integers(0, 256, (17, 31), dtype=np.uint8), (3, 3), 0)
canny("graynoise", gray, several)

# Tiny images, where the replicated border is most of the image.
for h, w in [(1, 1), (2, 2), (1, 5), (3, 1), (3, 2)]:
    canny("tiny%dx%d" % (w, h), rng.integers(0, 256, (h, w, 3), dtype=np.uint8), [(100, 200), (0, 0)])

with open("cases.txt", "w") as f:
    f.write("# Written by make_canny.py with OpenCV %s: do not edit.\n" % cv2.__version__)
    f.write("".join(c + "\n" for c in cases))
