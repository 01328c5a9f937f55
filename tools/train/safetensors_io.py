"""Minimal safetensors reader and writer (no dependency beyond torch).

File layout (https://github.com/huggingface/safetensors, "Format"):
  8 bytes   little-endian u64 N, the header length
  N bytes   UTF-8 JSON: {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}
  rest      raw little-endian tensor data; offsets are relative to the end of the header
"""

import json
import struct

import torch

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def read_header(path):
    """Returns (header dict without __metadata__, metadata dict, data start offset)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", {}) or {}
    return header, meta, 8 + n


def load_file(path, dtype=None):
    """Reads every tensor of a safetensors file into CPU tensors.

    dtype, when given, converts floating-point tensors (integers are left alone)."""
    header, _, start = read_header(path)
    with open(path, "rb") as f:
        f.seek(start)
        data = bytearray(f.read())
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        tdtype = _DTYPES[info["dtype"]]
        shape = info["shape"]
        if end == begin:
            t = torch.empty(shape, dtype=tdtype)
        else:
            t = torch.frombuffer(data, dtype=tdtype, offset=begin, count=(end - begin) // _itemsize(tdtype))
            t = t.reshape(shape).clone()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[name] = t
    return out


def save_file(tensors, path, metadata=None):
    """Writes a dict of tensors (any device, contiguous or not) as safetensors, keys sorted."""
    header = {"__metadata__": dict(metadata or {"format": "pt"})}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        if t.dtype not in _NAMES:
            raise ValueError(f"{name}: dtype {t.dtype} not supported by safetensors writer")
        raw = _tensor_bytes(t)
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)  # keep the data 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for raw in blobs:
            f.write(raw)


def _itemsize(dtype):
    return torch.empty((), dtype=dtype).element_size()


def _tensor_bytes(t):
    if t.numel() == 0:
        return b""
    # A uint8 view of the storage is endian-exact on little-endian hosts (all torch targets).
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.to(torch.uint8).numpy().tobytes()
