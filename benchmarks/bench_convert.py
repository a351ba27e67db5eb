"""Streaming conversion benchmark: convert a full-size Ouro-1.4B-shaped checkpoint and report wall time and
peak resident memory against the checkpoint's size on disk (target: peak RSS <= 0.5x the checkpoint).

The checkpoint is written here with random weights in Ouro's real key layout (``model.embed_tokens.weight``,
``model.layers.{i}.self_attn.{q,k,v,o}_proj.weight``, ``model.layers.{i}.mlp.{gate,up,down}_proj.weight``,
the 4 sandwich norms per layer, ``model.norm.weight``, ``model.early_exit_gate.{weight,bias}``,
``lm_head.weight``), sharded, in float32 by default (~5.7 GB; ``--dtype bfloat16`` halves it and converts
in bfloat16). The conversion runs in a child process with the shipped ``models/ouro-1.4b`` recipe (6 Jet
layers), so its peak RSS (``VmHWM`` of the child, not ``ru_maxrss``, which carries
the parent's peak over ``exec``) is measured alone.

    python benchmarks/bench_convert.py [--dtype float32|bfloat16] [--workdir DIR] [--keep]

Never run by the tests (it needs ~2x the checkpoint size of free disk and a few minutes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

OURO_1_4B = json.loads(Path(__file__).with_name("ouro-1.4b-config.json").read_text())  # its config.json


def ouro_tensors(cfg: dict):
    """(name, shape) in the real key layout."""
    H, inter, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    yield "model.embed_tokens.weight", (V, H)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            yield p + f"self_attn.{proj}.weight", (H, H)
        yield p + "mlp.gate_proj.weight", (inter, H)
        yield p + "mlp.up_proj.weight", (inter, H)
        yield p + "mlp.down_proj.weight", (H, inter)
        for norm in (
            "input_layernorm",
            "input_layernorm_2",
            "post_attention_layernorm",
            "post_attention_layernorm_2",
        ):
            yield p + f"{norm}.weight", (H,)
    yield "model.norm.weight", (H,)
    yield "model.early_exit_gate.weight", (1, H)
    yield "model.early_exit_gate.bias", (1,)
    yield "lm_head.weight", (V, H)


def write_checkpoint(folder: Path, dtype: torch.dtype, shard_bytes: int = 2 * 10**9) -> int:
    """Write the checkpoint shard by shard (only one shard in memory); return its size on disk."""
    from sleepify.weights_io import write_safetensors

    folder.mkdir(parents=True)
    cfg = dict(OURO_1_4B, torch_dtype=str(dtype).removeprefix("torch."))
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    specs = list(ouro_tensors(cfg))
    shards: list[list[tuple[str, tuple]]] = [[]]
    size = 0
    elem = torch.empty(0, dtype=dtype).element_size()
    for name, shape in specs:
        n = elem * int(torch.tensor(shape).prod())
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    weight_map = {}
    gen = torch.Generator().manual_seed(0)
    for k, shard in enumerate(shards):
        tmp = folder / f"tmp{k}"
        tmp.mkdir()
        tensors = [(name, (torch.randn(shape, generator=gen) * 0.02).to(dtype)) for name, shape in shard]
        write_safetensors(tensors, tmp, max_shard_size=10**12)
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        (tmp / "model.safetensors").rename(folder / fname)
        tmp.rmdir()
        weight_map.update({name: fname for name, _ in shard})
        del tensors
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


CHILD = """
import sys, time
from sleepify.memory_plan import peak_rss
from sleepify.stages.convert import convert
t = time.perf_counter()
res = convert(sys.argv[1], recipe="models/ouro-1.4b", out_dir=sys.argv[2],
              overrides=[f"model.dtype={sys.argv[3]}"], log=None)
wall = time.perf_counter() - t
peak = peak_rss()  # VmHWM: ru_maxrss would report this parent's peak (fork + exec carries it over)
print(f"{wall} {peak} {res.params_before} {res.params_after}")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_convert_"))
    src, out = work / "ouro-1.4b-random", work / "converted"
    try:
        t = time.perf_counter()
        disk = write_checkpoint(src, dtype)
        print(f"wrote {disk / 1e9:.2f} GB ({args.dtype}) in {time.perf_counter() - t:.1f} s -> {src}")
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(src), str(out), args.dtype], capture_output=True, text=True
        )
        if proc.returncode:
            sys.exit(proc.stderr)
        wall, peak, before, after = proc.stdout.split()[-4:]
        wall, peak, before, after = float(wall), int(peak), int(before), int(after)
        out_disk = sum(p.stat().st_size for p in out.glob("*.safetensors"))
        print(f"parameters: {before:,} -> {after:,} (+{100 * (after - before) / before:.2f}%)")
        print(f"convert wall time: {wall:.1f} s")
        print(
            f"peak RSS: {peak / 1e9:.2f} GB = {peak / disk:.2f}x the checkpoint on disk ({disk / 1e9:.2f} GB)"
        )
        print(
            f"output on disk: {out_disk / 1e9:.2f} GB; "
            f"target peak <= 0.5x: {'OK' if peak <= 0.5 * disk else 'MISSED'}"
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
