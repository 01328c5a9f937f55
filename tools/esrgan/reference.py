#!/usr/bin/env python3
"""Reference outputs of ESRGAN generators for diffusion/esrgan_test.go.

The generator is written here from the ESRGAN paper (Wang et al. 2018, "ESRGAN:
Enhanced Super-Resolution Generative Adversarial Networks", Fig. 4): a first conv, B
residual-in-residual dense blocks (each three dense blocks of five 3x3 convs, every conv
seeing the block input concatenated with all earlier outputs, LeakyReLU 0.2 after the
first four, the dense block's output scaled by 0.2 and added to its input; the RRDB's
output scaled by 0.2 and added to its input), a trunk conv added to the first conv's
output, two nearest-neighbour 2x upsamplings each followed by a conv and LeakyReLU, an HR
conv with LeakyReLU and the last conv. Module names follow Real-ESRGAN's checkpoints so
that its .pth files load; its x2 and x1 models pixel-unshuffle the image first (in the
test's x2 case, by 2).

Weights are random (torch's default initialisation under a fixed seed, conv_last scaled
to spread the image over [0, 1]), small (8 features) so that the committed files stay
small. Writes, into the folder given
(default diffusion/testdata/esrgan):
  esrgan-x4.pth, esrgan-x2.pth   {"params_ema": state_dict}, as Real-ESRGAN saves them
  esrgan-ref.safetensors         per case: <case>.input (H, W, 3) the uint8 image as F32,
                                 <case>.output (1, 3, sH, sW) the generator's F32 output

Run with Debian's python3-torch: /usr/bin/python3 tools/esrgan/reference.py
"""
import json
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


class DenseBlock(nn.Module):
    def __init__(self, feat, grow):
        super().__init__()
        for k in range(5):
            out = grow if k < 4 else feat
            setattr(self, f"conv{k + 1}", nn.Conv2d(feat + k * grow, out, 3, 1, 1))

    def forward(self, x):
        seen = [x]
        for k in range(4):
            y = F.leaky_relu(getattr(self, f"conv{k + 1}")(torch.cat(seen, 1)), 0.2)
            seen.append(y)
        return x + 0.2 * self.conv5(torch.cat(seen, 1))


class RRDB(nn.Module):
    def __init__(self, feat, grow):
        super().__init__()
        self.rdb1 = DenseBlock(feat, grow)
        self.rdb2 = DenseBlock(feat, grow)
        self.rdb3 = DenseBlock(feat, grow)

    def forward(self, x):
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class Generator(nn.Module):
    def __init__(self, scale, feat, blocks, grow):
        super().__init__()
        self.unshuffle = 4 // scale
        self.conv_first = nn.Conv2d(3 * self.unshuffle**2, feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(feat, grow) for _ in range(blocks)])
        self.conv_body = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(feat, 3, 3, 1, 1)

    def forward(self, x):
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join("diffusion", "testdata", "esrgan")
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(20180901)
    refs = {}
    # (case, scale, features, blocks, growth, height, width)
    for case, scale, feat, blocks, grow, h, w in [("x4", 4, 8, 2, 4, 9, 11), ("x2", 2, 8, 1, 4, 10, 12)]:
        net = Generator(scale, feat, blocks, grow).eval()
        with torch.no_grad():
            # Default initialisation leaves the output near 0: spread it over [0, 1] and
            # past it, so that the 8-bit image exercises clamping and rounding.
            net.conv_last.weight.mul_(30)
            net.conv_last.bias.fill_(0.5)
        image = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8)
        x = (image.float() / 255).permute(2, 0, 1).unsqueeze(0)
        with torch.no_grad():
            y = net(x)
        state = {k: v for k, v in net.state_dict().items()}
        torch.save({"params_ema": state}, os.path.join(out_dir, f"esrgan-{case}.pth"))
        refs[f"{case}.input"] = image.float()
        refs[f"{case}.output"] = y
    write_safetensors(os.path.join(out_dir, "esrgan-ref.safetensors"), refs)


if __name__ == "__main__":
    main()
