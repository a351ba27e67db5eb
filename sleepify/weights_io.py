"""Safetensors I/O for converting: stream tensors out of a checkpoint and write (sharded) safetensors.

Self-contained (torch and the standard library only): each tensor is read with one ``readinto`` into its own
buffer (no memory map, no second copy) and written straight from its memory, shard by shard, with the
``model.safetensors.index.json`` that transformers reads when sharded.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sleepify.errors import ModelLoadError

__all__ = ["iter_safetensors", "parse_size", "safetensors_files", "write_safetensors"]

_ST_DTYPES = {
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
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def _read_header(f) -> tuple[dict[str, Any], int]:
    raw = f.read(8)
    if len(raw) != 8:
        raise ModelLoadError(f"{getattr(f, 'name', 'file')} is not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", raw)
    header = json.loads(f.read(n))
    return header, 8 + n


def iter_safetensors(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` of a safetensors file, each read with one ``readinto`` into its own buffer
    (no memory map, no second copy)."""
    with open(path, "rb") as f:
        header, base = _read_header(f)
        items = sorted(
            ((k, v) for k, v in header.items() if k != "__metadata__"),
            key=lambda kv: kv[1]["data_offsets"][0],
        )
        for name, info in items:
            dtype = _ST_DTYPES.get(info["dtype"])
            if dtype is None:
                raise ModelLoadError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
            start, end = info["data_offsets"]
            buf = torch.empty(end - start, dtype=torch.uint8)
            if end > start:
                f.seek(base + start)
                if f.readinto(memoryview(buf.numpy())) != end - start:
                    raise ModelLoadError(f"{path}: truncated file (tensor {name})")
            yield name, buf.view(dtype).reshape(info["shape"])


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / f for f in sorted(set(weight_map.values()))]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        raise ModelLoadError(
            f"{folder} has weights only as {', '.join(pickles[:3])} (pickle); "
            "sleepify reads safetensors only. "
            "Convert them first, e.g. load with transformers and save_pretrained(safe_serialization=True)"
        )
    raise ModelLoadError(f"{folder} holds no *.safetensors weights")


def parse_size(size: str | int) -> int:
    if isinstance(size, int):
        return size
    s = size.strip().upper()
    for unit, mult in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    return int(s)


def write_safetensors(
    tensors: list[tuple[str, torch.Tensor]], folder: Path, max_shard_size: str | int = "5GB"
) -> list[Path]:
    """Write safetensors shard(s) (+ ``model.safetensors.index.json`` when sharded), one tensor at a time
    straight from its memory (no serialised copy of a whole shard)."""
    limit = parse_size(max_shard_size)
    shards: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append((name, t))
        size += nbytes
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map: dict[str, str] = {}
    total = 0
    paths = []
    for fname, shard in zip(names, shards, strict=True):
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, t in shard:
            nbytes = t.numel() * t.element_size()
            header[name] = {
                "dtype": _ST_NAMES[t.dtype],
                "shape": list(t.shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
            weight_map[name] = fname
        total += offset
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        path = folder / fname
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for _, t in shard:
                if t.numel():
                    data = t.detach().contiguous().reshape(-1).view(torch.uint8)
                    f.write(memoryview(data.numpy()))
        paths.append(path)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return paths
