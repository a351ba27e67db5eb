"""Batches for training: a deterministic, resumable order and left-padding collation.

The order of examples depends only on the seed and the dataset size, never on N or the model, so
runs with different numbers of sleep passes see exactly the same data (the paper's fairness rule).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class DataPosition:
    """Where the data stream stands: the epoch and how many examples of it were consumed."""

    epoch: int = 0
    offset: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}


class DeterministicOrder:
    """Epoch-wise permutations from ``seed + epoch``; ``take(n)`` continues exactly where it stopped."""

    def __init__(self, size: int, seed: int, position: DataPosition | None = None):
        if size <= 0:
            raise ValueError("the training dataset is empty")
        self.size = size
        self.seed = seed
        self.position = position or DataPosition()

    def _perm(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=gen)

    def take(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            perm = self._perm(self.position.epoch)
            need = n - len(out)
            chunk = perm[self.position.offset : self.position.offset + need].tolist()
            out += chunk
            self.position.offset += len(chunk)
            if self.position.offset >= self.size:
                self.position = DataPosition(self.position.epoch + 1, 0)
        return out


def collate(
    rows: Sequence[dict[str, Any]], pad_id: int, length: int | None = None
) -> dict[str, torch.Tensor]:
    """Left-pad ``input_ids`` / ``loss_mask`` (and ``attention_mask`` if present) to the longest row (or to
    ``length`` when longer: sharded training pads every rank to the same length)."""
    length = max([len(r["input_ids"]) for r in rows] + [length or 0])
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attn = torch.zeros(len(rows), length, dtype=torch.long)
    loss = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, length - n :] = torch.as_tensor(r["input_ids"], dtype=torch.long)
        attn[i, length - n :] = torch.as_tensor(r.get("attention_mask", [1] * n), dtype=torch.long)
        loss[i, length - n :] = torch.as_tensor(r["loss_mask"], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss * attn}


def micro_batches(indices: list[int], micro: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), micro):
        yield indices[start : start + micro]
