"""Shared machinery of the task generators: the row schema, disjoint deterministic splits, writing.

Row schema (every task, every split; see ``docs/data.md``)
-----------------------------------------------------------
``input_ids``       list[int32]  the whole sequence, prompt and answers, already tokenized
``attention_mask``  list[int8]   1 on real tokens, 0 on padding (Depo's left padding)
``loss_mask``       list[int8]   ``loss_mask[i] == 1`` iff token ``i`` is an answer token, i.e. a *target*:
                                 it is predicted from tokens ``< i`` (the logits at position ``i - 1``).
                                 A trainer shifts as usual: ``logits[:, :-1]`` vs ``input_ids[:, 1:]``
                                 weighted by ``loss_mask[:, 1:]``. Position 0 is never an answer token.
``answer_starts``   list[int32]  position of the first token of each answer
``answer_lengths``  list[int32]  number of tokens of each answer (``loss_mask`` is 1 exactly on the union
                                 of ``[start, start + length)``)
``bucket``          list[int32]  difficulty of each answer (Rule 110: t, Depo: k, GSM: ops; prepare: the
                                 --bucket-field value or 0)
``text``            string       the sequence as text (prompt + answers; padding not included)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sleepify.errors import SleepifyError
from sleepify.fsutil import RunLock, publish_folder, staging

COLUMNS = ("input_ids", "attention_mask", "loss_mask", "answer_starts", "answer_lengths", "bucket", "text")
SPLIT_STREAM = {"train": 0, "test": 1}
TEST_FIRST = ("test", "train")  # test is drawn first; train never repeats a test example


class DataError(SleepifyError):
    """Bad data options, an unreachable dataset source, or an output folder that must not be touched."""


def features():
    import datasets

    ints = datasets.List(datasets.Value("int32"))
    mask = datasets.List(datasets.Value("int8"))
    return datasets.Features(
        {
            "input_ids": ints,
            "attention_mask": mask,
            "loss_mask": mask,
            "answer_starts": ints,
            "answer_lengths": ints,
            "bucket": ints,
            "text": datasets.Value("string"),
        }
    )


@dataclass
class Rows:
    """A batch of rows, column-wise. A column is a 2-D numpy array (fixed length rows), a list of
    sequences (ragged rows) or, for ``text``, a list/array of strings. ``keys`` identify the content
    (used for de-duplication and split disjointness)."""

    columns: dict[str, Any]
    keys: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, idx: Sequence[int]) -> Rows:
        idx = list(idx)
        out: dict[str, Any] = {}
        for name, col in self.columns.items():
            out[name] = (
                col[np.asarray(idx, dtype=np.int64)] if isinstance(col, np.ndarray) else [col[i] for i in idx]
            )
        return Rows(out, [self.keys[i] for i in idx])

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Rows({name: [] for name in COLUMNS}, [])
        out: dict[str, Any] = {}
        for name in parts[0].columns:
            cols = [p.columns[name] for p in parts]
            if all(isinstance(c, np.ndarray) for c in cols) and len({c.shape[1:] for c in cols}) == 1:
                out[name] = np.concatenate(cols)
            else:
                out[name] = [x for c in cols for x in (list(c) if isinstance(c, np.ndarray) else c)]
        return Rows(out, [k for p in parts for k in p.keys])


def row_keys(input_ids: np.ndarray | Sequence[Sequence[int]]) -> list[bytes]:
    """Content keys: the raw bytes of each row's token ids (int32)."""
    if isinstance(input_ids, np.ndarray) and input_ids.ndim == 2:
        flat = np.ascontiguousarray(input_ids, dtype=np.int32)
        return [row.tobytes() for row in flat]
    return [np.asarray(r, dtype=np.int32).tobytes() for r in input_ids]


def split_rng(seed: int, split: str) -> np.random.Generator:
    """Independent, deterministic random stream per (seed, split)."""
    return np.random.default_rng([int(seed), SPLIT_STREAM[split]])


def generate_splits(
    make: Callable[[np.random.Generator, int, str], Rows],
    n_train: int,
    n_test: int,
    seed: int,
    *,
    chunk: int = 10_000,
    desc: str = "generating",
    progress: bool = True,
) -> dict[str, Rows]:
    """Draw ``n_test`` then ``n_train`` distinct rows with ``make(rng, n, split)``.

    Duplicates within a split and train rows whose content is also in test are dropped and replaced
    by fresh draws, so the splits are disjoint by content. Deterministic for a seed.
    """
    from tqdm.auto import tqdm

    if n_train < 0 or n_test < 0:
        raise DataError("--n-train and --n-test must be >= 0")
    wanted = {"train": n_train, "test": n_test}
    seen: set[bytes] = set()
    out: dict[str, Rows] = {}
    bar = tqdm(total=n_train + n_test, desc=desc, unit="ex", disable=not progress, mininterval=0.5)
    try:
        for split in TEST_FIRST:
            rng = split_rng(seed, split)
            parts: list[Rows] = []
            have, stale = 0, 0
            while have < wanted[split]:
                need = wanted[split] - have
                batch = make(rng, min(chunk, need + need // 50 + 4), split)
                keep = []
                for i, key in enumerate(batch.keys):
                    if key not in seen and have + len(keep) < wanted[split]:
                        seen.add(key)
                        keep.append(i)
                stale = 0 if keep else stale + 1
                if stale >= 20:
                    raise DataError(
                        f"cannot draw {wanted[split]} distinct {split} examples (only {have} exist for these "
                        "settings) — lower --n-train/--n-test or widen the task parameters"
                    )
                parts.append(batch.take(keep))
                have += len(keep)
                bar.update(len(keep))
            out[split] = Rows.concat(parts)
    finally:
        bar.close()
    return out


def _list_array(col: Any, pa_type):
    import pyarrow as pa

    if isinstance(col, np.ndarray) and col.ndim == 2:
        n, t = col.shape
        offsets = pa.array(np.arange(0, n * t + 1, t, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(col.ravel().astype(pa_type.to_pandas_dtype())))
    return pa.array([np.asarray(r).tolist() for r in col], type=pa.list_(pa_type))


def to_dataset(rows: Rows):
    """Rows -> ``datasets.Dataset`` with the schema of :func:`features` (built through pyarrow, fast)."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    feats = features()
    arrays = []
    for name in COLUMNS:
        col = rows.columns[name]
        if name == "text":
            arrays.append(pa.array([str(s) for s in col], type=pa.string()))
        else:
            item = pa.int8() if name in ("attention_mask", "loss_mask") else pa.int32()
            arrays.append(_list_array(col, item))
    table = pa.Table.from_arrays(arrays, names=list(COLUMNS)).cast(feats.arrow_schema)
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=feats))


def check_out(out: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing non-empty output folder unless ``overwrite`` (checked before generating)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise DataError(f"--out {path} exists and is not a folder — choose another path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise DataError(
            f"--out {path} already exists and is not empty — pass --overwrite or choose another path"
        )
    return path


def write_dataset(
    splits: dict[str, Rows] | Any,
    out: str | os.PathLike,
    meta: dict[str, Any],
    tokenizer: Any = None,
    *,
    overwrite: bool = False,
):
    """Save ``train``/``test`` as a ``DatasetDict`` (``save_to_disk``) plus ``meta.json`` and the
    tokenizer (``tokenizer/``) into ``out``.

    Everything is written to a temporary sibling folder first and renamed into place at the end, so
    an interrupted run leaves no half-written ``out``.
    """
    import datasets

    path = check_out(out, overwrite)
    if isinstance(splits, datasets.DatasetDict):
        dd = splits
    else:
        dd = datasets.DatasetDict({name: to_dataset(splits[name]) for name in ("train", "test")})
    counts = {name: dd[name].num_rows for name in dd}
    # a split without rows is left out: datasets cannot read an empty split back (--n-train 0 is an
    # evaluation-only dataset, --n-test 0 a train-only one)
    dd = datasets.DatasetDict({name: ds for name, ds in dd.items() if ds.num_rows > 0})
    if not dd:
        raise DataError("--n-train and --n-test are both 0: nothing to write (give one of them rows)")
    # two `sleepify data` into one --out: the second refuses in one line
    with RunLock(path), staging(path) as tmp:
        check_out(out, overwrite)  # again, under the lock: another run may have published meanwhile
        dd.save_to_disk(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "tokenizer"))
        full_meta = {
            "sleepify_data_version": 1,
            "columns": list(COLUMNS),
            "loss_mask": "loss_mask[i] == 1 iff token i is an answer token, predicted from tokens < i",
            "splits": counts,
            **meta,
        }
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, default=str) + "\n")
        publish_folder(tmp, path)
    return dd


def tokenizer_meta(tokenizer: Any, name: str | None) -> dict[str, Any]:
    return {
        "name": name or "char",
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "saved_to": "tokenizer/",
    }


def parse_int_list(value: str | Sequence[int], what: str) -> list[int]:
    """``"0,4,8"`` -> ``[0, 4, 8]`` (sorted, unique); a clear error otherwise."""
    if isinstance(value, str):
        try:
            items = [int(v) for v in value.replace(" ", "").split(",") if v != ""]
        except ValueError:
            raise DataError(f"{what} must be a comma-separated list of integers, got '{value}'") from None
    else:
        items = [int(v) for v in value]
    if not items:
        raise DataError(f"{what} must list at least one integer")
    return sorted(set(items))


def encode_with_answer(
    tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], sep: str = " "
) -> list[dict[str, Any]]:
    """Tokenize ``prompt + sep + answer`` for each pair and mark the answer tokens.

    The answer tokens are those whose character span overlaps the answer (so a BPE token such as
    ``" 12"`` that carries the separator counts as an answer token, while a lone separator token
    does not). Special tokens the tokenizer adds (e.g. BOS) get loss_mask 0.
    """
    texts = [p + sep + a for p, a in zip(prompts, answers, strict=True)]
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True)
        out = []
        for text, answer, ids, offsets in zip(
            texts, answers, enc["input_ids"], enc["offset_mapping"], strict=True
        ):
            a0 = len(text) - len(answer)
            mask = [int(e > s and e > a0 and s < len(text)) for s, e in offsets]
            out.append(_row(tokenizer, text, ids, mask))
        return out
    out = []  # slow tokenizer: prompt and answer tokenized separately
    for prompt, answer in zip(prompts, answers, strict=True):
        p = tokenizer(prompt + sep, add_special_tokens=True)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"]
        out.append(_row(tokenizer, prompt + sep + answer, p + a, [0] * len(p) + [1] * len(a)))
    return out


def _row(tokenizer: Any, text: str, ids: list[int], mask: list[int]) -> dict[str, Any]:
    pos = [i for i, m in enumerate(mask) if m]
    if not pos:
        raise DataError("an answer produced no tokens — check the answer field / tokenizer")
    if pos[0] == 0:
        raise DataError("an example has an empty prompt: the first token cannot be an answer token")
    start, length = pos[0], pos[-1] - pos[0] + 1
    mask = [0] * start + [1] * length + [0] * (len(ids) - start - length)  # contiguous span
    return {
        "input_ids": list(ids),
        "attention_mask": [1] * len(ids),
        "loss_mask": mask,
        "answer_starts": [start],
        "answer_lengths": [length],
        "text": text,
    }


def rows_from_dicts(rows: list[dict[str, Any]]) -> Rows:
    cols = {name: [r[name] for r in rows] for name in COLUMNS}
    return Rows(cols, row_keys(cols["input_ids"]))


def hub_offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
