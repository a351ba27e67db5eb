"""The user story at its real size, through the CLI: convert -> data -> warmup --N 4 -> train --N 4
(killed once, then ``--resume auto``) -> eval -> export (sharded) -> load the export where sleepify cannot
be imported -> generate across a window boundary; then the memory planner against the measured peaks at
three settings.

The checkpoint is random, in the exact layout of Ouro-1.4B (``benchmarks/ouro-1.4b-config.json``, untied
embeddings as upstream) or Jet-Nemotron-2B (``benchmarks/jet-nemotron-2b-config.json``, tied), written
tensor by tensor in bfloat16 and sharded like upstream, with a character-level tokenizer of the real
vocabulary size built with the ``tokenizers`` library (the vocabulary is padded with filler tokens: the
embedding and head keep their real size). Every stage runs as ``python -m sleepify ...`` in its own process,
as a user types it, with the shipped ``models/<model>`` recipe; for each: wall time, peak resident memory
(``VmHWM`` of the stage process; peak GPU memory on CUDA is the planner's domain, not measured here) and
bytes written.

Sizes: the model dimensions are the real ones. On a CPU the window is scaled down (``--window``, default
L = 128, GSM-Infinite-style rows of 260-320 tokens: every row crosses two windows); on CUDA the
paper's L = 2000 (rows of 4004-4500 tokens). The chain survives a stop: run it again with the same
``--workdir`` and it goes on from the stage it was in (see ``Chain``). ``--toy`` shrinks the model (same
layout, tiny widths, two passes per Ouro forward, L = 64) so that ``tests/test_bench.py`` runs the whole
chain.

    python benchmarks/bench_scale.py --model ouro-1.4b --workdir /work/bench/ouro   # ~10 GiB, ~2 h on 2 cores
    python benchmarks/bench_scale.py --model jet-nemotron-2b
    python benchmarks/bench_scale.py --toy --json out.json       # the same chain at toy shapes

Planner check: the warm-up run (N = 4, checkpointed windows), the train run (N = 4, checkpointed) and one
more train step with N = 2 and ``sleep.checkpoint_windows=false``: predicted peak (``train --dry-run
--json``'s ``memory.peak_bytes``) against the measured peak, target within 25 %.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

MODELS = {  # name -> (real config, recipe, toy config overrides, toy recipe overrides)
    "ouro-1.4b": (
        "ouro-1.4b-config.json",
        "models/ouro-1.4b",
        dict(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=176,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=32,
            total_ut_steps=2,
        ),
        [
            "conversion.jet_layers=[1, 3]",
            "conversion.jet.num_heads=1",
            "conversion.jet.head_dim=32",
            "conversion.jet.generator_reduction=4",
        ],
    ),
    "jet-nemotron-2b": (
        "jet-nemotron-2b-config.json",
        "models/jet-nemotron-2b",
        dict(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=176,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
            bos_token_id=0,
            eos_token_id=0,
            layer_types=["jet", "jet", "attn", "swa", "jet", "jet"],
            efficient_attention_config={
                "jet": {
                    "num_heads": 2,
                    "head_dim": 16,
                    "expand_v": 2,
                    "conv_size": 4,
                    "dconv_generator_reduction": 4,
                    "norm_eps": "1e-5",
                },
                "swa": {"window_size": 8},
            },
        ),
        ["conversion.loop.start=1", "conversion.loop.end=5"],
    ),
}

PEAK_LAUNCHER = """
import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    with open(os.environ["BENCH_PEAK_FILE"], "w") as f:
        f.write(str(hwm))
atexit.register(_peak)
sys.argv = ["sleepify", *sys.argv[1:]]
runpy.run_module("sleepify", run_name="__main__", alter_sys=True)
"""

# load and generate in a process where sleepify cannot be imported (the export's remote code only)
GENERATE = """
import importlib.abc, json, sys, time
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sleepify" or name.startswith("sleepify."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
sys.meta_path.insert(0, Block())
try:
    import sleepify
    raise SystemExit("sleepify is importable")
except ModuleNotFoundError:
    pass
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, window = sys.argv[1], int(sys.argv[2])
tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype="auto").eval()
text = ("x = 3 + 4. y = x * 2. " * 400)
ids = tok(text, return_tensors="pt").input_ids[:, : window - 4]  # the 16 new tokens cross the window boundary
t = time.perf_counter()
with torch.no_grad():
    out = model.generate(ids, max_new_tokens=16, do_sample=False)
new = out.shape[1] - ids.shape[1]
print(json.dumps({"prompt_tokens": ids.shape[1], "new_tokens": new, "seconds": time.perf_counter() - t,
                  "dtype": str(next(model.parameters()).dtype), "crossed": ids.shape[1] + new > window}))
"""


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def write_checkpoint(folder: Path, config: dict, shard: str) -> int:
    """Random bfloat16 weights in ``config``'s exact layout (the model's own state dict names and shapes,
    from the model built on the meta device), written tensor by tensor; tied targets left out."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    import sleepify  # noqa: F401  (registers ouro / jet_nemotron)
    from sleepify.weights_io import TensorSpec, write_specs

    folder.mkdir(parents=True)
    cfg = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = MODEL_FOR_CAUSAL_LM_MAPPING[type(cfg)](cfg)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    gen = torch.Generator().manual_seed(0)

    def make(name: str, shape: tuple[int, ...]):
        if "norm" in name and len(shape) == 1:
            return lambda: torch.ones(shape, dtype=torch.bfloat16)
        return lambda: (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)

    specs = [
        TensorSpec(n, torch.bfloat16, tuple(t.shape), make(n, tuple(t.shape)))
        for n, t in model.state_dict().items()
        if n not in tied
    ]
    write_specs(specs, folder, shard)
    (folder / "config.json").write_text(json.dumps({**config, "torch_dtype": "bfloat16"}, indent=2))
    return _size(folder)


def write_tokenizer(folder: Path, vocab_size: int, eos_id: int) -> None:
    """A character-level tokenizer (``tokenizers``' WordLevel, one token per character) of exactly
    ``vocab_size`` entries, ``<|endoftext|>`` at the model's eos id, filler tokens for the rest."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab: dict[str, int] = {}
    names = iter(["<unk>", *chars])
    for i in range(vocab_size):
        token = "<|endoftext|>" if i == eos_id else next(names, f"<filler_{i}>")
        vocab[token] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)


class Chain:
    """Runs the stages as CLI processes and records wall time, peak RSS and bytes written per stage.

    The record (``<workdir>/bench_scale.json``) is rewritten after every stage, so a chain that was stopped
    (the machine changed, the session ended) goes on where it stopped when run again with the same
    ``--workdir``: finished stages are skipped; an unfinished warm-up or train is resumed (``--resume
    auto``: its row then times the remainder), any other unfinished stage is redone (``--overwrite``)."""

    RESUMABLE = ("warmup", "train")
    RECORD = "bench_scale.json"

    def __init__(self, work: Path, threads: int, results: dict, json_out: Path | None = None):
        self.work = work
        self.record = work / self.RECORD
        self.json_out = json_out
        self.results = results
        self.rows: list[dict] = results.setdefault("stages", [])
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false",
        }

    @classmethod
    def open(cls, work: Path, threads: int, results: dict, json_out: Path | None = None) -> Chain:
        """A new chain in ``work``, or the one recorded there when its settings are the same."""
        record = work / cls.RECORD
        if record.is_file():
            earlier = json.loads(record.read_text())
            keys = ("model", "toy", "window", "device", "warmup_steps", "steps")
            if any(earlier.get(k) != results.get(k) for k in keys):
                was = ", ".join(f"{k}={earlier.get(k)}" for k in keys)
                raise SystemExit(f"--workdir {work} holds a chain run with {was}: use another --workdir")
            results = earlier
            print(f"going on with the chain recorded in {record}", flush=True)
        return cls(work, threads, results, json_out)

    def done(self, stage: str) -> dict | None:
        return next((row for row in self.rows if row["stage"] == stage), None)

    def save(self) -> None:
        """Rewrite the record (and ``--json``) atomically: an interrupted write leaves the last one."""
        for path in filter(None, (self.record, self.json_out)):
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(self.results, indent=2))
            os.replace(tmp, path)

    def _cmd(self, args: list[str]) -> list[str]:
        return [sys.executable, "-c", PEAK_LAUNCHER, *args, "--quiet"]

    def run(self, stage: str, args: list[str], written: Path, kill_when=None) -> dict:
        if (row := self.done(stage)) is not None:
            print(f"{stage:<24} done earlier ({row['wall_s']} s)", flush=True)
            return row
        resumed = written.exists() and _size(written) > 0
        if resumed:
            if args[0] in self.RESUMABLE:
                args = [*args, "--resume", "auto"] if "--resume" not in args else args
            elif args[0] in ("convert", "data", "export"):
                args = [*args, "--overwrite"]
        peak_file = self.work / f".peak-{len(self.rows)}"
        env = {**self.env, "BENCH_PEAK_FILE": str(peak_file)}
        before = _size(written)
        t = time.perf_counter()
        proc = subprocess.Popen(
            self._cmd(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        killed = False
        if kill_when is not None:
            while proc.poll() is None and not kill_when():
                time.sleep(0.2)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                killed = True
        out, err = proc.communicate()
        wall = time.perf_counter() - t
        if proc.returncode and not (killed and proc.returncode == 143):
            raise SystemExit(f"{stage} failed ({proc.returncode}): sleepify {' '.join(args)}\n{err[-3000:]}")
        row = {
            "stage": stage,
            "wall_s": round(wall, 2),
            "peak_rss_bytes": int(peak_file.read_text()) if peak_file.is_file() else None,
            "bytes_written": _size(written) - before,
            "killed": killed,
        }
        if resumed:
            row["went_on_from_an_earlier_stop"] = True
        self.add(row)
        peak, wrote = _gib(row["peak_rss_bytes"]), _gib(row["bytes_written"])
        print(f"{stage:<24} {wall:8.1f} s  peak {peak}  wrote {wrote}", flush=True)
        return row

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.save()


def _gib(n: int | None) -> str:
    from sleepify.fsutil import human_size

    return human_size(n)


def planned_peak(stage: str, model_dir: Path, args: dict, overrides: list[str]) -> dict:
    """``<stage> --dry-run --json``'s memory plan, computed in this process (same function)."""
    import sleepify.api as api
    from sleepify.stages.train import plan_memory_for

    # resume="auto": the plan of a chain that goes on after a stop, whose run folder is already there
    plan = api.plan(stage, model_dir, overrides=overrides, resume="auto", **args)
    return plan_memory_for(plan).to_dict()


def format_report(results: dict) -> str:
    """Markdown tables of one chain's results (the rows docs/performance.md shows)."""
    from sleepify.fsutil import human_size

    head = (
        f"**{results['model']}**, L = {results['window']}, {results['device']}, "
        f"{results['threads']} threads, warm-up {results.get('warmup_steps', 2)} steps, "
        f"train {results.get('steps', 2)} steps"
        f"{'' if results.get('complete', True) else ' (not complete)'}; random checkpoint "
        f"{human_size(results['checkpoint_bytes'], 'GiB')} GiB"
    )
    lines = [head, "", "| stage | wall time (s) | peak RSS (GiB) | written (GiB) |", "|---|---:|---:|---:|"]
    total = 0.0
    for row in results.get("stages", []):
        wall = "–" if row["wall_s"] is None else f"{row['wall_s']:.0f}"
        total += row["wall_s"] or 0
        peak, wrote = human_size(row["peak_rss_bytes"], "GiB"), human_size(row["bytes_written"], "GiB")
        lines.append(f"| {row['stage']} | {wall} | {peak} | {wrote} |")
    if gen := results.get("generate_without_sleepify"):
        total += gen["wall_s"]
        lines.append(
            f"| load + generate {gen['new_tokens']} tokens without sleepify ({gen['dtype'].split('.')[-1]}, "
            f"{gen['prompt_tokens']}-token prompt, crosses the window: {gen['crossed']}) | "
            f"{gen['wall_s']:.0f} | – | – |"
        )
    lines.append(f"| **all stages** | **{total:.0f}** ({total / 60:.1f} min) | | |")
    if results.get("planner"):
        lines += ["", "| planner setting | predicted (GiB) | measured (GiB) | predicted / measured |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        for p in results["planner"]:
            lines.append(
                f"| {p['setting']} | {human_size(p['predicted_bytes'], 'GiB')} | "
                f"{human_size(p['measured_bytes'], 'GiB')} | "
                f"{p['ratio']:.2f}{'' if p['within_25pct'] else ' (outside 25 %)'} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="ouro-1.4b")
    ap.add_argument("--toy", action="store_true", help="tiny widths, same layout (the test)")
    ap.add_argument("--window", type=int, help="L (default: 2000 on CUDA, 128 on CPU, 64 with --toy)")
    ap.add_argument("--steps", type=int, default=2, help="train steps, killed after the first")
    ap.add_argument("--warmup-steps", type=int, default=2, help="warm-up steps")
    ap.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    ap.add_argument(
        "--workdir",
        help="where to write (default: a temp dir); run again with the same one to go on after a stop",
    )
    ap.add_argument("--keep", action="store_true", help="keep the written folders once the chain is done")
    ap.add_argument("--json", dest="json_out", help="write the results to this file")
    ap.add_argument("--report", nargs="+", metavar="JSON", help="print the tables of earlier --json files")
    args = ap.parse_args(argv)
    if args.report:
        print("\n\n".join(format_report(json.loads(Path(f).read_text())) for f in args.report))
        return {}

    cfg_file, recipe, toy_cfg, toy_over = MODELS[args.model]
    config = json.loads((Path(__file__).with_name(cfg_file)).read_text())
    cuda = torch.cuda.is_available()
    if args.toy:
        config = {**config, **toy_cfg}
    window = args.window or (64 if args.toy else 2000 if cuda else 128)
    # GSM-Infinite-style rows that cross at least two windows (the generator's shortest are ~130 tokens);
    # on a CPU only just (the cost of a step grows with the row: 2-3 windows keep the chain within an hour)
    min_tok, max_tok = max(130, 2 * window + 4), max(200, 2 * window + (500 if cuda else 64))
    max_ops = 3 if max_tok >= 320 else 2  # three operations' required sentences alone take ~210-260 tokens
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    src, data, run = work / f"{args.model}-random", work / "data", work / "runs" / args.model
    over = [
        *(toy_over if args.toy else []),
        "model.dtype=bfloat16",
        f"sleep.window={window}",
        "train.batch_size=1",
        "train.log_every=1",
    ]
    results: dict = {
        "model": args.model,
        "toy": args.toy,
        "window": window,
        "device": "cuda" if cuda else "cpu",
        "threads": args.threads,
        "warmup_steps": args.warmup_steps,
        "steps": args.steps,
        "complete": False,
    }
    chain = Chain.open(work, args.threads, results, Path(args.json_out) if args.json_out else None)
    results = chain.results
    done = False
    try:
        if "checkpoint_bytes" not in results:
            t = time.perf_counter()
            shutil.rmtree(src, ignore_errors=True)  # a write that was stopped half-way
            ckpt = write_checkpoint(src, config, "100KB" if args.toy else "2GB")
            write_tokenizer(src, config["vocab_size"], config.get("eos_token_id") or 0)
            results["checkpoint_bytes"] = ckpt
            chain.save()
            print(
                f"random checkpoint: {ckpt / 2**30:.2f} GiB in {time.perf_counter() - t:.0f} s -> {src}",
                flush=True,
            )
        ckpt = results["checkpoint_bytes"]

        conv = chain.run(
            "convert",
            ["convert", str(src), "-r", recipe, "--out", str(run / "convert"), *over],
            run / "convert",
        )
        conv["peak_over_checkpoint"] = round(conv["peak_rss_bytes"] / ckpt, 3)
        chain.run(
            "data",
            [
                "data",
                "gsm-infinite",
                "--out",
                str(data),
                "--tokenizer",
                str(src),
                "--n-train",
                "8",
                "--n-test",
                "4",
                "--min-tokens",
                str(min_tok),
                "--max-tokens",
                str(max_tok),
                "--max-ops",
                str(max_ops),
            ],
            data,
        )
        warm_args = ["--N", "4", "--steps", str(args.warmup_steps), "--data", str(data)]
        plans = {
            "warmup N=4 checkpointed": planned_peak(
                "warmup", run / "convert", dict(N=4, steps=args.warmup_steps, data=str(data)), over
            )
        }
        warm = chain.run("warmup --N 4", ["warmup", str(run / "convert"), *warm_args, *over], run / "warmup")
        # train: killed once its first checkpoint is complete, then resumed with --resume auto
        from sleepify.training.checkpoint import latest_checkpoint

        train_over = [*over, "train.checkpoint_every=1"]
        train_args = ["train", str(run / "warmup"), "--N", "4", "--steps", str(args.steps), *train_over]
        plans["train N=4 checkpointed"] = planned_peak(
            "train", run / "warmup", dict(N=4, steps=args.steps), train_over
        )
        if chain.done("train --N 4 (killed)") is None and latest_checkpoint(run / "train") is not None:
            # the benchmark itself was stopped after train's first checkpoint: that stop is the kill
            chain.add({"stage": "train --N 4 (killed)", "wall_s": None, "peak_rss_bytes": None,
                       "bytes_written": _size(run / "train"), "killed": True,
                       "note": "stopped with the benchmark after its first checkpoint"})  # fmt: skip
        killed = chain.run(
            "train --N 4 (killed)",
            train_args,
            run / "train",
            kill_when=lambda: latest_checkpoint(run / "train") is not None,
        )
        resumed = chain.run("train --resume auto", [*train_args, "--resume", "auto"], run / "train")
        results["resume"] = {"killed": killed["killed"], "final_model": (run / "train" / "model").is_dir()}
        # the third planner setting: N = 2 without window checkpointing, one step
        nockpt_over = [*over, "sleep.checkpoint_windows=false"]
        plans["train N=2 not checkpointed"] = planned_peak(
            "train", run / "warmup", dict(N=2, steps=1, out=str(run / "train-nockpt")), nockpt_over
        )
        nockpt = chain.run(
            "train --N 2 (no ckpt)",
            [
                "train",
                str(run / "warmup"),
                "--N",
                "2",
                "--steps",
                "1",
                "--out",
                str(run / "train-nockpt"),
                *nockpt_over,
            ],
            run / "train-nockpt",
        )
        chain.run(
            "eval",
            ["eval", str(run / "train"), "--data", str(data), "--max-examples", "2", "--no-plot"],
            run / "train" / "eval",
        )
        export = work / "export"
        shard = "200KB" if args.toy else "1GB"
        chain.run(
            "export (sharded)",
            ["export", str(run / "train"), "--out", str(export), "--max-shard-size", shard],
            export,
        )
        results["export_shards"] = len(list(export.glob("*.safetensors")))
        chain.save()
        if "generate_without_sleepify" not in results:
            t = time.perf_counter()
            gen = subprocess.run(
                [sys.executable, "-c", GENERATE, str(export), str(window)],
                capture_output=True,
                text=True,
                env={**chain.env, "PYTHONPATH": ""},
            )
            if gen.returncode or not gen.stdout.strip():
                raise SystemExit(f"loading the export without sleepify failed:\n{gen.stderr[-3000:]}")
            results["generate_without_sleepify"] = {
                **json.loads(gen.stdout.strip().splitlines()[-1]),
                "wall_s": round(time.perf_counter() - t, 2),
            }
            print(f"generate (no sleepify)   {results['generate_without_sleepify']}", flush=True)
            chain.save()

        measured = {
            "warmup N=4 checkpointed": warm,
            "train N=4 checkpointed": max((killed, resumed), key=lambda r: r["peak_rss_bytes"] or 0),
            "train N=2 not checkpointed": nockpt,
        }
        compare = []
        for name, plan in plans.items():
            got = measured[name]["peak_rss_bytes"]
            ratio = plan["peak_bytes"] / got if got else None
            compare.append(
                {
                    "setting": name,
                    "predicted_bytes": plan["peak_bytes"],
                    "measured_bytes": got,
                    "ratio": round(ratio, 3) if ratio else None,
                    "within_25pct": ratio is not None and abs(ratio - 1) <= 0.25,
                }
            )
            print(
                f"planner {name:<28} predicted {_gib(plan['peak_bytes'])}  measured {_gib(got)}  "
                f"ratio {ratio:.2f}",
                flush=True,
            )
        results["planner"] = compare
        results["complete"] = done = True
        chain.save()
    finally:
        # a named --workdir survives a failure or a stop, so that running again goes on from there
        if not args.keep and (done or not args.workdir):
            shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
