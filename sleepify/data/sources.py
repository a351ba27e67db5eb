"""``--data`` (``data.path``) takes what people have and turns it into sleepify rows (docs/data.md).

Sources, tried in this order:

- a folder written by ``sleepify data`` (or any saved dataset with ``input_ids`` and ``loss_mask``);
- a folder saved with ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
- a ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file, or a folder of such files;
- a Hub dataset id (``datasets.load_dataset``; offline or unreachable Hub: one line).

Formats (``data.format``; ``auto`` picks the first that the columns fit):

============== ============================================ ==========================================
format         columns                                      loss on
============== ============================================ ==========================================
tokens         ``input_ids`` + ``loss_mask``                the rows' own ``loss_mask`` (used as is)
chat           ``messages`` (role / content dicts)          assistant turns (tokenizer's chat template)
prompt-answer  ``prompt`` + ``answer`` / ``completion``,     the answer
               ``question`` + ``answer``, ``input`` +
               ``output``, ``instruction`` + ``output``
text           ``text``                                     every token (language modelling)
============== ============================================ ==========================================

Everything is checked by :func:`open_data` before a model loads, so bad data costs one line and writes
nothing. Rows are tokenized with ``Dataset.map`` under a fingerprint of (source, format, fields,
tokenizer), so ``datasets`` caches the result next to the source's own cache files and a rerun with the
same data and tokenizer does not tokenize again. Data without an eval split gets a held-out part
(``data.test_size``, a fixed seed) that training never sees and ``sleepify eval`` scores.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleepify.config.schema import DataSection
from sleepify.data.common import COLUMNS, DataError, encode_with_answer, features
from sleepify.errors import clip, did_you_mean

log = logging.getLogger(__name__)

FORMATS = ("tokens", "chat", "prompt-answer", "text")  # the order auto-detection tries them in
PROMPT_ANSWER_PAIRS = (
    ("prompt", "answer"),
    ("prompt", "completion"),
    ("question", "answer"),
    ("input", "output"),
    ("instruction", "output"),
)
ACCEPTED = (
    "text (plain text, loss on every token), prompt+answer / prompt+completion / question+answer / "
    "input+output (loss on the answer), messages (chat, loss on assistant turns), or input_ids+loss_mask "
    "(tokenized rows, with answer_starts, answer_lengths, bucket for exact match)"
)
SPLIT_SEED = 0  # the held-out part does not depend on train.seed: eval finds the rows training left out
ROWS_VERSION = 1  # bump when the tokenization below changes, so cached map results are not reused

TOKENIZED = ("input_ids", "loss_mask")
EXACT_MATCH_COLUMNS = ("answer_starts", "answer_lengths", "bucket")


@dataclass
class OpenedData:
    """A data source with its format decided and its splits chosen; nothing tokenized yet."""

    path: str
    kind: str  # "sleepify dataset", "saved dataset", "json file", "Hub dataset", ...
    format: str
    fields: dict[str, str]  # role (text, prompt, answer, messages) -> column
    splits: dict[str, Any]  # "train" or "eval" -> datasets.Dataset (raw rows)
    held_out: str | None  # how the eval split was made when the source had none
    meta: dict[str, Any] = field(default_factory=dict)  # meta.json of a sleepify dataset
    separator: str | None = None
    max_tokens: int | None = None
    split_names: list[str] = field(default_factory=list)  # the source's own splits (empty: one Dataset)

    @property
    def needs_tokenizer(self) -> bool:
        return self.format != "tokens"

    @property
    def exact_match(self) -> str | None:
        """How ``sleepify eval`` scores the data: per answer / per row, or None (loss and perplexity)."""
        if self.format == "text":
            return None
        if self.format == "tokens" and not all(
            c in self.splits["eval"].column_names for c in EXACT_MATCH_COLUMNS
        ):
            return None
        return str(self.meta.get("exact_match", "answer"))

    def describe(self) -> str:
        """One line for the user: where the rows come from, the format, and the splits."""
        what = {
            "tokens": "tokenized rows, loss where loss_mask is 1",
            "text": f"plain text from '{self.fields.get('text')}', loss on every token",
            "prompt-answer": f"'{self.fields.get('prompt')}' -> '{self.fields.get('answer')}', "
            "loss on the answer",
            "chat": f"chat '{self.fields.get('messages')}', loss on assistant turns",
        }[self.format]
        split = self.held_out or "the source's own splits"
        n_train, n_eval = self.splits["train"].num_rows, self.splits["eval"].num_rows
        return (
            f"data: {self.path} ({self.kind}) — format {self.format} ({what}); "
            f"{n_train} train / {n_eval} held-out rows ({split})"
        )

    def rows(self, which: str, tokenizer: Any = None, *, progress: bool = True) -> Any:
        """The ``train`` or ``eval`` split as sleepify rows (``input_ids``, ``attention_mask``, ``loss_mask``
        and, except for tokenized data without them, ``answer_starts``, ``answer_lengths``, ``bucket``)."""
        ds = self.splits[which]
        if self.format == "tokens":
            return ds
        if tokenizer is None:
            raise DataError(f"{self.path}: {self.format} data needs the model's tokenizer")
        return tokenize(ds, tokenizer, self, progress=progress)


# ------------------------------------------------------------------------------------------------------------
# opening a source


def _looks_like_path(name: str) -> bool:
    from sleepify.data.prepare import FILE_BUILDERS

    return (
        name.startswith((".", "/", "~")) or Path(name).suffix.lower() in FILE_BUILDERS or name.count("/") > 1
    )


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """datasets' bars and log lines off: reading a local file is quick, and a bar or datasets' own error
    log line ("Failed to load JSON ...") would precede our one-line error."""
    from datasets.utils import logging as ds_logging

    was_on = ds_logging.is_progress_bar_enabled()
    verbosity = ds_logging.get_verbosity()
    ds_logging.disable_progress_bar()
    ds_logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        ds_logging.set_verbosity(verbosity)
        if was_on:
            ds_logging.enable_progress_bar()


def _load(name: str, config: str | None) -> tuple[Any, str]:
    """The raw ``Dataset`` / ``DatasetDict`` and what kind of source it is."""
    path = Path(name).expanduser()
    if path.exists():
        with _no_progress_bars():
            return _load_source(name, config)
    return _load_source(name, config)


def check_json_lines(path: Path, flag: str = "--data") -> None:
    """One line naming the file and the 1-based number of the first line of a ``.jsonl`` file that is not
    UTF-8 or not a JSON object (``datasets`` logs its own error, then names a 0-based row of a batch)."""
    import json

    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{flag} {path}: line {number} is not UTF-8 text (byte {err.start})"
                ) from None
            except ValueError as err:
                raise DataError(
                    f"{flag} {path}: line {number} is not valid JSON ({clip(str(err), 120)}): "
                    "fix or remove it"
                ) from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{flag} {path}: line {number} is a JSON {type(row).__name__}, not an object "
                    '({"column": value, ...})'
                )


def _load_source(name: str, config: str | None) -> tuple[Any, str]:
    import datasets

    from sleepify.data.prepare import FILE_BUILDERS, load_source

    path = Path(name).expanduser()
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(
                f"--data {name}: cannot read '{path.suffix}' files; use .jsonl, .json, .parquet or .csv"
            )
        if path.suffix.lower() == ".jsonl":
            check_json_lines(path)
        try:
            return datasets.load_dataset(builder, data_files=str(path)), f"{path.suffix.lower()[1:]} file"
        except Exception as err:  # noqa: BLE001 - a malformed file is one line
            raise DataError(f"--data {name}: cannot read it as {builder} ({_first_line(err)})") from None
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            kind = "sleepify dataset" if (path / "meta.json").is_file() else "saved dataset"
            try:
                return datasets.load_from_disk(str(path)), kind
            except Exception as err:  # noqa: BLE001 - e.g. an empty split saved by sleepify < 0.1: one line
                raise DataError(
                    f"--data {name}: cannot read this {kind} ({type(err).__name__}: {_first_line(err)}); "
                    "if a split has no rows, regenerate it with the current `sleepify data`"
                ) from None
        if (path / "recipe.yaml").is_file() or (path / "config.json").is_file():
            raise DataError(
                f"--data {name} is a sleepify run or model folder, not a dataset: pass the `sleepify data` "
                "folder or the .jsonl/.json/.parquet/.csv file to train on"
            )
        if not any(p.suffix.lower() in FILE_BUILDERS for p in path.rglob("*") if p.is_file()):
            raise DataError(
                f"--data {name}: a folder with neither a saved dataset nor .jsonl/.json/.parquet/.csv files"
            )
        for file in sorted(path.rglob("*.jsonl")):
            check_json_lines(file)
        try:
            return load_source(str(path)), "data folder"
        except Exception as err:  # noqa: BLE001 - files of mixed columns or types: one line
            raise DataError(
                f"--data {name}: cannot read the files in this folder ({_first_line(err)})"
            ) from None
    if _looks_like_path(name):
        raise DataError(
            f"--data {name} does not exist: pass a folder written by `sleepify data`, a saved dataset, a "
            ".jsonl/.json/.parquet/.csv file or a Hub dataset id"
        )
    hint = " — pass a local dataset folder or a .jsonl/.json/.parquet/.csv file instead"
    return load_source(name, config=config, hub_hint=hint), "Hub dataset"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return clip(text.splitlines()[0], 200) if text else type(err).__name__


def detect_format(columns: list[str], data: DataSection) -> tuple[str, dict[str, str]]:
    """The format of rows with these ``columns`` (``data.format`` or the first that fits) and the columns
    each role reads. Raises :class:`DataError` (one line: the columns found, the shapes accepted)."""
    cols = set(columns)

    def need(role: str, column: str) -> str:
        if column not in cols:
            raise DataError(
                f"data.{role}_field '{column}' is not a column{did_you_mean(column, columns)}; "
                f"columns: {', '.join(columns)}"
            )
        return column

    explicit = data.format != "auto"
    for fmt in FORMATS if not explicit else (data.format,):
        if fmt == "tokens" and (explicit or set(TOKENIZED) <= cols):
            missing = [c for c in TOKENIZED if c not in cols]
            if missing:
                raise DataError(
                    f"data.format tokens needs {', '.join(missing)}; columns: {', '.join(columns)}"
                )
            return fmt, {}
        if fmt == "chat" and (explicit or data.messages_field or "messages" in cols):
            return fmt, {"messages": need("messages", data.messages_field or "messages")}
        if fmt == "prompt-answer":
            if data.prompt_field or data.answer_field:
                if not (data.prompt_field and data.answer_field):
                    raise DataError("set both data.prompt_field and data.answer_field (or neither)")
                return fmt, {
                    "prompt": need("prompt", data.prompt_field),
                    "answer": need("answer", data.answer_field),
                }
            pair = next((p for p in PROMPT_ANSWER_PAIRS if set(p) <= cols), None)
            if pair:
                return fmt, {"prompt": pair[0], "answer": pair[1]}
            if explicit:
                raise DataError(
                    "data.format prompt-answer: no prompt/answer pair among the columns "
                    f"{', '.join(columns)}; set data.prompt_field and data.answer_field"
                )
        if fmt == "text" and (explicit or data.text_field or "text" in cols):
            return fmt, {"text": need("text", data.text_field or "text")}
    raise DataError(
        f"--data {data.path}: columns {', '.join(columns) or '(none)'}; sleepify trains on {ACCEPTED}"
    )


def _kind(feature: Any) -> str:
    """``string``, ``integer``, ``float``, ``bool``, ``list`` or the feature's own name."""
    dtype = str(getattr(feature, "dtype", "") or "")
    if dtype in ("string", "large_string"):
        return "string"
    if dtype.startswith(("int", "uint")):
        return "integer"
    if dtype.startswith("float"):
        return "float"
    if dtype == "bool":
        return "bool"
    if dtype == "list" or type(feature).__name__ in ("List", "LargeList", "Sequence"):
        return "list"
    return dtype or type(feature).__name__


# role -> the column kinds it takes (an answer may be a number: exact-match data often has them)
ROLE_KINDS = {
    "text": ("string",),
    "prompt": ("string",),
    "answer": ("string", "integer"),
    "messages": ("list",),
}


def check_column_types(features: Any, fields: dict[str, str], path: str) -> None:
    """One line when a column a role reads has the wrong type (an integer ``text`` column would otherwise
    be stringified and trained on)."""
    for role, column in fields.items():
        kind = _kind(features[column])
        if kind not in ROLE_KINDS[role]:
            wanted = " or ".join(ROLE_KINDS[role])
            raise DataError(
                f"--data {path}: column '{clip(column)}' ({role}) holds {kind} values, expected {wanted}: "
                f"fix the data, or set data.{role}_field to another column"
            )


def held_out_split(ds: Any, n_eval: int) -> tuple[Any, Any]:
    """``ds.train_test_split(test_size=n_eval, seed=SPLIT_SEED)``'s rows (the same permutation), with the
    indices kept in memory: opening data, a dry run too, must not write cache files into the user's folder
    (datasets' own keep_in_memory=True fails on a dataset read from disk)."""
    import numpy as np

    order = np.random.default_rng(SPLIT_SEED).permutation(ds.num_rows)
    return ds.select(order[n_eval:], keep_in_memory=True), ds.select(order[:n_eval], keep_in_memory=True)


def check_token_columns(features: Any, path: str) -> None:
    """Tokenized rows (``input_ids``, ``loss_mask`` and the exact-match columns) hold lists of integers."""
    for column in (*TOKENIZED, *EXACT_MATCH_COLUMNS):
        if column not in features:
            continue
        feature = features[column]
        inner = getattr(feature, "feature", None)
        if _kind(feature) != "list" or _kind(inner) != "integer":
            found = f"lists of {_kind(inner)}" if _kind(feature) == "list" else f"{_kind(feature)} values"
            raise DataError(
                f"--data {path}: column '{column}' holds {found}, expected lists of integers (token ids): "
                "tokenized rows as `sleepify data` writes them"
            )


def open_data(data: DataSection, *, need_eval: bool = True, need_train: bool = True) -> OpenedData:
    """Open ``data.path``, decide its format and its train / held-out splits (cheap: nothing is tokenized).

    Every problem is a :class:`DataError` with one line, raised before any model loads.

    Example::

        from sleepify.config.schema import DataSection
        opened = open_data(DataSection(path="chats.jsonl"))
        print(opened.describe())
    """
    import datasets

    if not data.path:
        raise DataError(
            "no data (data.path is not set): pass --data (a `sleepify data` folder, a saved dataset, a "
            ".jsonl/.json/.parquet/.csv file or a Hub dataset id)"
        )
    raw, kind = _load(data.path, data.config)
    held_out = None
    if isinstance(raw, datasets.DatasetDict):
        names = list(raw)
        if data.train_split in raw:
            train = raw[data.train_split]
        elif names == [data.eval_split] and not need_train:  # evaluation-only data, read by `eval`
            train = raw[data.eval_split].select([])
        elif names == [data.eval_split]:  # never train on the evaluation rows
            raise DataError(
                f"--data {data.path} has only a '{data.eval_split}' split (an evaluation-only dataset, e.g. "
                f"`sleepify data ... --n-train 0`): train on data with a '{data.train_split}' split, or set "
                "data.train_split"
            )
        elif len(names) == 1:
            train = raw[names[0]]
        else:
            raise DataError(
                f"--data {data.path} has no split '{data.train_split}'"
                f"{did_you_mean(data.train_split, names)}; splits: {', '.join(names)} (set data.train_split)"
            )
        evaluation = (
            raw[data.eval_split] if data.eval_split in raw and data.eval_split != data.train_split else None
        )
    else:
        train, evaluation = raw, None
    fmt, fields = detect_format(train.column_names, data)
    check_column_types(train.features, fields, data.path)
    if fmt == "tokens":
        check_token_columns(train.features, data.path)
    if evaluation is None:
        if train.num_rows < 2:
            raise DataError(
                f"--data {data.path} has {train.num_rows} row(s): need at least 2 to hold some out"
            )
        size = data.test_size
        n_eval = int(round(size * train.num_rows)) if size < 1 else int(size)
        n_eval = min(max(n_eval, 1), train.num_rows - 1)
        train, evaluation = held_out_split(train, n_eval)
        held_out = f"held out by data.test_size={size}, seed {SPLIT_SEED}"
    meta: dict[str, Any] = {}
    meta_file = Path(data.path) / "meta.json"
    if kind == "sleepify dataset":
        import json

        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{meta_file} is not valid JSON ({err})") from None
    if train.num_rows == 0 and need_train:
        raise DataError(f"--data {data.path}: the train split is empty")
    return OpenedData(
        path=data.path,
        kind=kind,
        format=fmt,
        fields=fields,
        splits={"train": train, "eval": evaluation},
        held_out=held_out,
        meta=meta,
        separator=data.separator,
        max_tokens=data.max_tokens,
        split_names=list(raw) if isinstance(raw, datasets.DatasetDict) else [],
    )


# ------------------------------------------------------------------------------------------------------------
# tokenization


def _tokenizer_key(tokenizer: Any) -> list[Any]:
    """What makes two tokenizers tokenize alike (the cache key of the tokenized rows)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return [
        type(tokenizer).__name__,
        vocab,
        getattr(tokenizer, "chat_template", None),
        tokenizer.all_special_tokens,
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
    ]


def _separator(prompt: str, answer: str, sep: str | None) -> str:
    if sep is not None:
        return sep
    return "" if not prompt or not answer or prompt[-1].isspace() or answer[0].isspace() else " "


def _text_rows(batch: dict[str, list], tokenizer: Any, opened: OpenedData) -> list[dict[str, Any]]:
    texts = ["" if t is None else str(t) for t in batch[opened.fields["text"]]]  # a null row: skipped
    enc = tokenizer(texts, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    rows = []
    for text, ids in zip(texts, enc, strict=True):
        ids = list(ids)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)  # the model learns where a document ends
        if opened.max_tokens:
            ids = ids[: opened.max_tokens]
        if len(ids) < 2:
            continue  # nothing to predict
        n = len(ids)
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * n,
                "loss_mask": [0] + [1] * (n - 1),  # every token but the first is a target
                "answer_starts": [],
                "answer_lengths": [],
                "bucket": [],
                "text": text,
            }
        )
    return rows


def _prompt_answer_rows(batch: dict[str, list], tokenizer: Any, opened: OpenedData) -> list[dict[str, Any]]:
    prompts = ["" if p is None else str(p) for p in batch[opened.fields["prompt"]]]
    answers = ["" if a is None else str(a) for a in batch[opened.fields["answer"]]]  # null: skipped
    rows = []
    for prompt, answer in zip(prompts, answers, strict=True):
        if not answer.strip():
            continue  # nothing to learn or score
        (row,) = encode_with_answer(
            tokenizer, [prompt], [answer], sep=_separator(prompt, answer, opened.separator)
        )
        row["bucket"] = [0]
        rows.append(row)
    return rows


def _chat_rows(batch: dict[str, list], tokenizer: Any, opened: OpenedData) -> list[dict[str, Any]]:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "chat data needs a tokenizer with a chat template, and the model's has none: set "
            "tokenizer.chat_template in the model folder, or use prompt/answer columns"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("chat data needs a fast tokenizer (character offsets mark the assistant turns)")
    rows = []
    for messages in batch[opened.fields["messages"]]:
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            if text.startswith(upto) and upto.startswith(before):
                spans.append((len(before), len(upto)))  # the turn with its end-of-turn marker
            else:  # a template that renders a prefix differently: the content itself
                start = text.find(message["content"], spans[-1][1] if spans else 0)
                if start >= 0:
                    spans.append((start, start + len(message["content"])))
        # the template writes the special tokens as text: do not add them a second time
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        mask = [int(any(e > s and e > a and s < b for a, b in spans)) for s, e in offsets]
        if len(ids) < 2 or not any(mask[1:]):
            continue  # no assistant turn to learn
        mask[0] = 0
        starts, lengths = [], []
        for i, m in enumerate(mask):
            if m and (i == 0 or not mask[i - 1]):
                starts.append(i)
                lengths.append(0)
            if m:
                lengths[-1] += 1
        rows.append(
            {
                "input_ids": list(ids),
                "attention_mask": [1] * len(ids),
                "loss_mask": mask,
                "answer_starts": starts,
                "answer_lengths": lengths,
                "bucket": [0] * len(starts),
                "text": text,
            }
        )
    return rows


ROW_BUILDERS = {"text": _text_rows, "prompt-answer": _prompt_answer_rows, "chat": _chat_rows}


def tokenize(ds: Any, tokenizer: Any, opened: OpenedData, *, progress: bool = True) -> Any:
    """``ds`` (raw rows of ``opened.format``) -> sleepify rows, through a cached ``Dataset.map``."""
    from datasets.fingerprint import Hasher

    build = ROW_BUILDERS[opened.format]
    key = [
        ds._fingerprint,
        opened.format,
        sorted(opened.fields.items()),
        opened.separator,
        opened.max_tokens,
        ROWS_VERSION,
        _tokenizer_key(tokenizer),
    ]

    def fn(batch: dict[str, list]) -> dict[str, list]:
        rows = build(batch, tokenizer, opened)
        return {name: [r[name] for r in rows] for name in COLUMNS}

    with contextlib.nullcontext() if progress else _no_progress_bars():
        out = ds.map(
            fn,
            batched=True,
            remove_columns=ds.column_names,
            features=features(),
            new_fingerprint=Hasher.hash(key),
            desc="tokenizing",
        )
    if out.num_rows == 0:
        raise DataError(f"--data {opened.path}: no usable rows after tokenizing (empty texts or answers?)")
    return out


def load_tokenizer_for(model_dir: str | Path, opened: OpenedData) -> Any:
    """The model's tokenizer when the data needs one (a one-line error when the model folder has none)."""
    if not opened.needs_tokenizer:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError) as err:
        raise DataError(
            f"{opened.format} data is tokenized with the model's tokenizer, and {model_dir} has none "
            f"({_first_line(err)}): save one into the model folder, or pass a `sleepify data` folder"
        ) from None
