"""Safetensors I/O for converting and exporting: read a checkpoint tensor by tensor and write (sharded)
safetensors, one tensor in memory at a time.

Self-contained (torch and the standard library only). An index of a checkpoint's tensors comes from the
shard headers alone (:func:`index_safetensors`); each tensor is read with one ``readinto`` into its own
buffer when it is needed (:func:`read_tensor`, :func:`iter_safetensors`), never through a memory map (the
pages of a mapped file that were read count in the process's resident memory until it is unmapped).
Shards are written from *specs* (name, dtype, shape and a function that makes the tensor,
:func:`write_specs`): the headers are known before any data, so a tensor can go from its source shard to
its output shard and be dropped (``sleepify convert`` streams this way; ``export`` casts as it writes),
with the ``model.safetensors.index.json`` that transformers reads when sharded.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sleepify.errors import ModelLoadError

__all__ = [
    "TensorRef",
    "TensorSpec",
    "index_safetensors",
    "iter_safetensors",
    "parse_size",
    "read_tensor",
    "safetensors_files",
    "specs_of",
    "write_safetensors",
    "write_specs",
]

ST_DTYPES = {
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
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor of a safetensors file lies (from its header)."""

    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: its header entry, and ``make()`` giving it (called once, when it is written)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        n = torch.empty(0, dtype=self.dtype).element_size()
        for d in self.shape:
            n *= d
        return n


def read_header(f: Any) -> tuple[dict[str, Any], int]:
    raw = f.read(8)
    if len(raw) != 8:
        raise ModelLoadError(f"{getattr(f, 'name', 'file')} is not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", raw)
    try:
        header = json.loads(f.read(n))
    except ValueError:
        raise ModelLoadError(f"{getattr(f, 'name', 'file')} is not a safetensors file (bad header)") from None
    return header, 8 + n


def iter_safetensors(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` of a safetensors file, each read with one ``readinto`` into its own buffer
    (no memory map, no second copy)."""
    with open(path, "rb") as f:
        header, base = read_header(f)
        items = sorted(
            ((k, v) for k, v in header.items() if k != "__metadata__"),
            key=lambda kv: kv[1]["data_offsets"][0],
        )
        for name, info in items:
            dtype = ST_DTYPES.get(info["dtype"])
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
        files = [folder / f for f in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            more = f", ... (+{len(absent) - 3} more)" if len(absent) > 3 else ""
            raise ModelLoadError(
                f"{index} names {', '.join(absent[:3])}{more}, not in {folder}: the download is incomplete "
                "(fetch the missing shards, or pass a complete folder)"
            )
        return files
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


def index_safetensors(files: Iterable[Path]) -> dict[str, TensorRef]:
    """Every tensor of ``files`` by name, from their headers (nothing else is read)."""
    refs: dict[str, TensorRef] = {}
    for path in files:
        with open(path, "rb") as f:
            header, base = read_header(f)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = ST_DTYPES.get(info["dtype"])
            if dtype is None:
                raise ModelLoadError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
            start, end = info["data_offsets"]
            refs[name] = TensorRef(Path(path), dtype, tuple(info["shape"]), base + start, end - start)
    return refs


def read_tensor(ref: TensorRef) -> torch.Tensor:
    """The tensor ``ref`` points at, read into its own buffer."""
    buf = torch.empty(ref.nbytes, dtype=torch.uint8)
    if ref.nbytes:
        with open(ref.path, "rb") as f:
            f.seek(ref.start)
            if f.readinto(memoryview(buf.numpy())) != ref.nbytes:
                raise ModelLoadError(f"{ref.path}: truncated file")
    return buf.view(ref.dtype).reshape(ref.shape)


def parse_size(size: str | int) -> int:
    if isinstance(size, int):
        return size
    s = size.strip().upper()
    for unit, mult in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    return int(s)


def write_specs(specs: list[TensorSpec], folder: Path, max_shard_size: str | int = "5GB") -> list[Path]:
    """Write safetensors shard(s) (+ ``model.safetensors.index.json`` when sharded) from ``specs``, in their
    order: each tensor is made, checked against its spec, written and dropped."""
    limit = parse_size(max_shard_size)
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
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
        for spec in shard:
            header[spec.name] = {
                "dtype": ST_NAMES[spec.dtype],
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            offset += spec.nbytes
            weight_map[spec.name] = fname
        total += offset
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        path = folder / fname
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for spec in shard:
                t = spec.make()
                if t.dtype != spec.dtype or tuple(t.shape) != tuple(spec.shape):
                    raise ValueError(f"{spec.name}: made {t.dtype} {tuple(t.shape)}, header says "
                                     f"{spec.dtype} {spec.shape}")  # fmt: skip
                if t.numel():
                    data = t.detach().contiguous().reshape(-1).view(torch.uint8)
                    f.write(memoryview(data.numpy()))
                del t
        paths.append(path)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return paths


def specs_of(tensors: Iterable[tuple[str, torch.Tensor]]) -> list[TensorSpec]:
    """Specs of tensors already in memory."""
    return [TensorSpec(n, t.dtype, tuple(t.shape), lambda t=t: t) for n, t in tensors]


def write_safetensors(
    tensors: Iterable[tuple[str, torch.Tensor]] | Iterable[TensorSpec],
    folder: Path,
    max_shard_size: str | int = "5GB",
) -> list[Path]:
    """Write safetensors shard(s) (+ ``model.safetensors.index.json`` when sharded), one tensor at a time
    straight from its memory (no serialised copy of a whole shard): ``(name, tensor)`` pairs, or
    :class:`TensorSpec` s whose tensors are made as they are written."""
    specs = [t if isinstance(t, TensorSpec) else specs_of([t])[0] for t in tensors]
    return write_specs(specs, folder, max_shard_size)
