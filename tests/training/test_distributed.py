"""Distributed training on CPU (gloo, 2 processes) against one process with the same global batch.

DDP: the loss curve and the weights equal the single-process run. FSDP2 (``train.distributed=fsdp``) on a
sleep hybrid whose sharded blocks run ``N = 2`` times per window: the same, with torch.optim.Muon's
Newton–Schulz run in float32 (torch runs it in bfloat16, whose rounding depends on how the matmuls are
split; ``test_stages.py`` checks the CLI run with the stock bf16 iteration); a checkpoint written by the
sharded run resumes both sharded and on one process to the uninterrupted result.
"""

from __future__ import annotations

import faulthandler
import math
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.optim._muon as torch_muon

from sleepify.models.hybrid import SleepHybridConfig, SleepHybridForCausalLM
from sleepify.models.scratch import SleepScratchForCausalLM, builtin_config
from sleepify.training.loop import close_distributed, init_distributed, train
from sleepify.training.optim import newton_schulz_float32
from sleepify.training.parallel import fsdp_recompute_supported, shard_units
from tests.training.test_loop import TinyLM, cfg, dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn: Callable, out_dir: Path) -> None:
    mp.spawn(_rank_main, args=(2, _free_port(), fn, str(out_dir)), nprocs=2, join=True)


def _rank_main(rank: int, world: int, port: int, fn: Callable, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    faulthandler.enable()  # a rank that aborts in C++ prints where it was (the CI log keeps stderr)
    init_distributed()
    fn(rank, Path(out_dir))
    # as `sleepify train` does. Once in CI (and ~1 in 30 runs here) rank 1 aborted at the end of this test
    # when each rank closed the group on its own; the cause is not proven (faulthandler above will show it)
    close_distributed()


# ------------------------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, out: Path) -> None:
    model = TinyLM()
    result = train(model, dataset(), cfg(micro_batch_size=1), out / "ddp", progress=False)
    if rank == 0:
        torch.save({"losses": result.losses, "state": model.state_dict()}, out / "ddp.pt")


@pytest.mark.slow
def test_ddp_two_ranks_matches_single_process(tmp_path: Path) -> None:
    single_model = TinyLM()
    single = train(single_model, dataset(), cfg(micro_batch_size=1), tmp_path / "single", progress=False)
    _spawn(_ddp_worker, tmp_path)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert ddp["losses"] == pytest.approx(single.losses, abs=1e-5)
    for name, value in single_model.state_dict().items():
        torch.testing.assert_close(ddp["state"][name], value, atol=1e-5, rtol=1e-4, msg=name)


# ------------------------------------------------------------------------------------------------------ FSDP


def sleep_model() -> SleepHybridForCausalLM:
    """The built-in 4-block GDN/attention hybrid (tiny), perturbed so every weight matters, windows of 8."""
    torch.manual_seed(0)
    base = SleepScratchForCausalLM(builtin_config("gdn-hybrid-4-tiny"))
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = SleepHybridForCausalLM(SleepHybridConfig(base_config=base.config.to_dict(), sleep_window=8))
    model.load_state_dict({f"base.{k}": v for k, v in base.state_dict().items()})
    return model


def sleep_rows(n: int = 8, lengths: tuple[int, int] = (20, 21)) -> list[dict]:
    """Streams of 20 tokens (windows of 8, 8, 4) answering in the last window; every third row also scores
    two tokens of the second window, so the ranks disagree on which windows sleep. ``lengths``: the range
    of lengths (varying lengths make the ranks pad to a common one)."""
    g = torch.Generator().manual_seed(7)
    rows = []
    for i in range(n):
        length = int(torch.randint(*lengths, (1,), generator=g))
        ids = torch.randint(4, 100, (length,), generator=g).tolist()
        ids[-1] = ids[0]
        loss_mask = [0] * (length - 3) + [1] * 3
        if i % 3 == 0:
            loss_mask[10:12] = [1, 1]
        rows.append({"input_ids": ids, "loss_mask": loss_mask})
    return rows


RECOMPUTE_OK = fsdp_recompute_supported()  # FSDP2 + activation checkpointing


def sleep_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch, sleep_passes=2).loss


def sleep_loss_recompute(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """With activation checkpointing per window (the paper recipes): sharded blocks run again in backward."""
    return model(**batch, sleep_passes=2, checkpoint_windows=True).loss


def sleep_cfg(**kw):  # noqa: ANN003, ANN201
    # weight decay on, so that the no-decay group (A_log, dt_bias) must survive sharding
    base = {"steps": 4, "batch_size": 4, "micro_batch_size": 1, "distributed": "fsdp"}
    return cfg(**{**base, "optimizer": {"weight_decay": 0.1}, **kw})


def _fsdp_worker(rank: int, out: Path) -> None:
    torch_muon._zeropower_via_newtonschulz = newton_schulz_float32
    results = {}
    model = sleep_model()
    full = train(model, sleep_rows(), sleep_cfg(), out / "fsdp-full", loss_fn=sleep_loss, progress=False)
    results["full"] = full.losses
    frozen = sleep_model()  # warm-up style: only the GDN mixers train, the rest is frozen
    part = train(
        frozen, sleep_rows(), sleep_cfg(steps=2, trainable=["*mixer*"]), out / "fsdp-part",
        loss_fn=sleep_loss, progress=False,
    )  # fmt: skip
    results["part"] = part.losses
    if RECOMPUTE_OK:  # older torch: refused by the stage (check_fsdp_supported), see test_stages.py
        recompute = train(
            sleep_model(), sleep_rows(), sleep_cfg(steps=2), out / "fsdp-recompute",
            loss_fn=sleep_loss_recompute, progress=False,
        )  # fmt: skip
        results["recompute"] = recompute.losses
    killed = train(
        sleep_model(), sleep_rows(), sleep_cfg(checkpoint_every=2), out / "fsdp-resume", loss_fn=sleep_loss,
        progress=False, stop_after=2,
    )  # fmt: skip
    if rank == 0:
        shutil.copytree(out / "fsdp-resume", out / "fsdp-killed")  # for a single-process resume later
    dist.barrier()
    resumed_model = sleep_model()
    resumed = train(
        resumed_model, sleep_rows(), sleep_cfg(checkpoint_every=2), out / "fsdp-resume", loss_fn=sleep_loss,
        progress=False, resume=True,
    )  # fmt: skip
    results["resumed"] = killed.losses + resumed.losses
    ragged = train(
        sleep_model(), sleep_rows(lengths=(12, 30)), sleep_cfg(steps=2), out / "fsdp-ragged",
        loss_fn=sleep_loss, progress=False,
    )  # fmt: skip
    results["ragged"] = ragged.losses
    # gathering the full weights is collective: every rank calls it, rank 0 receives them
    from sleepify.training.parallel import full_model_state

    states = {"full": full_model_state(model), "resumed": full_model_state(resumed_model)}
    if rank == 0:
        torch.save({"losses": results, "states": states}, out / "fsdp.pt")


@pytest.mark.slow
def test_fsdp_two_ranks_matches_single_process_and_resumes(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", newton_schulz_float32)
    _spawn(_fsdp_worker, tmp_path)
    sharded = torch.load(tmp_path / "fsdp.pt", weights_only=True)

    def single(**kw):  # noqa: ANN003, ANN202
        model = sleep_model()
        result = train(model, sleep_rows(), sleep_cfg(**kw), tmp_path / "single", loss_fn=sleep_loss,
                       progress=False)  # fmt: skip
        shutil.rmtree(tmp_path / "single")
        return result.losses, model.state_dict()

    losses, state = single()
    assert sharded["losses"]["full"] == pytest.approx(losses, abs=1e-5)
    assert sharded["losses"]["resumed"] == pytest.approx(losses, abs=1e-5)
    for key in ("full", "resumed"):
        assert set(sharded["states"][key]) == set(state)
        for name, value in state.items():
            torch.testing.assert_close(sharded["states"][key][name], value, atol=1e-5, rtol=1e-4, msg=name)
    # rows of 12 to 29 tokens: each rank pads to the longest of both ranks (1 to 4 windows) and runs
    assert len(sharded["losses"]["ragged"]) == 2 and all(map(math.isfinite, sharded["losses"]["ragged"]))
    part_losses, _ = single(steps=2, trainable=["*mixer*"])
    if RECOMPUTE_OK:
        assert sharded["losses"]["recompute"] == pytest.approx(single(steps=2)[0], abs=1e-5)
    assert sharded["losses"]["part"] == pytest.approx(part_losses, abs=1e-5)

    # the checkpoint the sharded run wrote (full, name-keyed state) resumes on one process
    model = sleep_model()
    rest = train(model, sleep_rows(), sleep_cfg(checkpoint_every=2), tmp_path / "fsdp-killed",
                 loss_fn=sleep_loss, progress=False, resume=True)  # fmt: skip
    assert rest.losses == pytest.approx(losses[2:], abs=1e-5)
    for name, value in state.items():
        torch.testing.assert_close(model.state_dict()[name], value, atol=1e-5, rtol=1e-4, msg=name)


def test_shard_units_are_the_blocks() -> None:
    model = sleep_model()
    units = shard_units(model)
    assert units == list(model.base.model.layers)  # outermost ModuleList elements with parameters
