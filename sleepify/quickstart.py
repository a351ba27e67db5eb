"""``sleepify quickstart``: the whole pipeline on an embedded tiny default, on CPU, in minutes.

It calls the stages through the Python API (:mod:`sleepify.api`) and prints, before each, the command a
user would type for it, so it is also their walkthrough:

    data rule110 -> convert -> warmup -> train --N 2 -> eval --N 1,2 -> export -> generate

The base model is a tiny Qwen2-shaped model built locally with transformers' own class and randomly
initialised (nothing is downloaded); conversion inserts two MLP-free Jet layers into it. Settings live
in ``recipes/quickstart.yaml``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import click

from sleepify.errors import SleepifyError

RECIPE = "quickstart"


@dataclass
class QuickstartPlan:
    out: Path
    passes: int = 2
    warmup_steps: int = 40
    train_steps: int = 400
    n_train: int = 4000
    n_test: int = 200
    t: str = "0"
    batch_size: int = 32

    @classmethod
    def quick(cls, out: Path) -> QuickstartPlan:
        """A shortened run (tests, smoke checks): same stages, a handful of steps."""
        return cls(out, warmup_steps=2, train_steps=3, n_train=64, n_test=16, batch_size=8)


def build_base_model(folder: Path, seed: int = 0) -> None:
    """The embedded default base model: a 2-layer Qwen2 (d = 64) with the character tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from sleepify.data.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _show(command: str) -> None:
    """The command a user would type for the step that follows (quickstart is also the walkthrough)."""
    click.secho("\n$ sleepify " + command, bold=True)


def run_quickstart(plan: QuickstartPlan, overwrite: bool = False, progress: bool = True) -> dict:
    """Every stage called directly through the Python API (sleepify.api), printing the equivalent command."""
    from sleepify import api, runs
    from sleepify.evaluation.report import PLOT_FILE, format_table

    out = plan.out
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SleepifyError(f"{out} exists and is not empty: pass --overwrite or another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base, data, run = out / "base-model", out / "data", out / "run"
    click.secho(f"building the embedded tiny base model in {base}", bold=True)
    build_base_model(base)
    counts = f"--n-train {plan.n_train} --n-test {plan.n_test} --t {plan.t}"
    _show(f"data rule110 --out {data} {counts}")
    api.make_data("rule110", data, n_train=plan.n_train, n_test=plan.n_test, t_values=plan.t, progress=False)
    converted = runs.convert_dir(base.name, run_dir=run)  # the run layout: sleepify.runs
    _show(f"convert {base} --out {converted} -r {RECIPE}")
    api.convert(str(base), recipe=RECIPE, out=converted)
    common = dict(
        recipe=RECIPE, N=plan.passes, overrides={"train.batch_size": plan.batch_size}, progress=progress
    )
    flags = f"-r {RECIPE} --data {data} --N {plan.passes} train.batch_size={plan.batch_size}"
    warmed = runs.model_dir_of(runs.stage_dir(converted, "warmup"))
    _show(f"warmup {converted} {flags} --steps {plan.warmup_steps}")
    api.warmup(converted, data, steps=plan.warmup_steps, **common)
    trained = runs.model_dir_of(runs.stage_dir(warmed, "train"))
    _show(f"train {warmed} {flags} --steps {plan.train_steps}")
    api.train(warmed, data, steps=plan.train_steps, **common)
    _show(f"eval {trained} --data {data} --N 1,{plan.passes}")
    report = api.evaluate(trained, data, N=[1, plan.passes], progress=False)
    click.echo(format_table(report))
    _show(f"export {runs.run_dir_of(trained)} --out {out / 'export'}")
    api.export(runs.run_dir_of(trained), out / "export")
    from datasets import load_from_disk

    row = load_from_disk(str(data))["test"][0]
    prompt = row["text"][: row["answer_starts"][0]]
    _show(f"generate {out / 'export'} --prompt {prompt} --max-new-tokens 4 --greedy")
    result = api.generate(out / "export", prompt, max_new_tokens=4, greedy=True)
    click.echo(f"{prompt}{(result.texts or [''])[0]}")
    summary = {
        "seconds": round(time.perf_counter() - start, 1),
        "base_model": str(base),
        "data": str(data),
        "converted": str(converted),
        "warmup": str(warmed),
        "trained": str(trained),
        "eval": report["out"],
        "plot": str(Path(report["out"]) / PLOT_FILE),
        "export": str(out / "export"),
        "results": {r["label"]: r["overall"]["accuracy"] for r in report["results"]},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def print_summary(summary: dict) -> None:
    click.secho(f"\nquickstart finished in {summary['seconds']} s", bold=True)
    for key in ("base_model", "data", "converted", "warmup", "trained", "eval", "plot", "export"):
        click.echo(f"  {key:<10} {summary[key]}")
    click.echo("  exact-match accuracy on held-out Rule 110 rows (chance: 1/16 for 4 random bits):")
    for label, accuracy in summary["results"].items():
        click.echo(f"    {label:<28} {accuracy:.3f}")
