"""Depo task (paper §6.2; Physics of LMs Part 4.1): k-hop queries over a shuffled directed cycle.

Node names are 1 or 2 character tokens: an upper-case letter optionally followed by a lower-case
letter (``A``, ``Qx``; 26 + 26*26 = 702 names), so names delimit themselves and the edge list needs
no separators. Sequence layout (defaults: ``max_nodes = 75``, ``cycle_tokens = 300``,
``n_queries = 10``, ``query_tokens = 70``, total 370; window ``L = 75``):

    [<pad> ... <pad>]  left padding up to ``cycle_tokens`` (attention_mask 0, loss_mask 0)
    edges              the n edges ``src dst`` of the cycle in random order, each written as the two
                       names back to back (``AbC`` = Ab -> C), optionally with ``arrow`` between and
                       ``edge_sep`` after (e.g. ``--arrow ">" --edge-sep ","`` gives ``Ab>C,``)
    queries            ``n_queries`` times ``<k><v>:<answer>`` — k in decimal, the start node v, ":",
                       then the answer = the node reached after k outgoing edges from v (1–2 tokens,
                       loss_mask 1). ``16Ab:Cd`` asks "16 hops after Ab" and answers ``Cd``.
    [<pad> ... <pad>]  right padding up to ``query_tokens`` (after the last answer; attention_mask 0)

The cycle part therefore always spans exactly ``cycle_tokens`` positions (4 windows of 75 with the
defaults) and every row has the same length. n is uniform in ``[min_nodes, max_nodes]`` (train and
test); k is uniform in ``[1, max_k]`` for train and uniform over ``test_ks`` (default the powers of
two <= max_k: 1, 2, 4, 8, 16) for test. ``bucket[j]`` = k of query j.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np

from sleepify.data.common import DataError, Rows, generate_splits, row_keys

UPPER = string.ascii_uppercase
LOWER = string.ascii_lowercase
MAX_NAMES = len(UPPER) * (1 + len(LOWER))


class DepoConfig:
    def __init__(
        self,
        max_nodes: int = 75,
        min_nodes: int = 3,
        n_queries: int = 10,
        max_k: int = 16,
        test_ks: list[int] | None = None,
        cycle_tokens: int | None = None,
        query_tokens: int | None = None,
        arrow: str = "",
        edge_sep: str = "",
    ) -> None:
        if not 2 <= min_nodes <= max_nodes <= MAX_NAMES:
            raise DataError(f"need 2 <= --min-nodes <= --max-nodes <= {MAX_NAMES}")
        if n_queries < 1 or max_k < 1:
            raise DataError("--n-queries and --max-k must be >= 1")
        for sep in (arrow, edge_sep):
            if any(c.isalnum() or c == ":" for c in sep):
                raise DataError("--arrow/--edge-sep must not contain letters, digits or ':'")
        self.max_nodes, self.min_nodes, self.n_queries, self.max_k = max_nodes, min_nodes, n_queries, max_k
        self.test_ks = sorted(set(test_ks)) if test_ks else [1 << i for i in range(max_k.bit_length())]
        if min(self.test_ks) < 1:
            raise DataError("test k values must be >= 1")
        self.arrow, self.edge_sep = arrow, edge_sep
        per_edge = len(arrow) + len(edge_sep)
        self.cycle_tokens = cycle_tokens or max_nodes * (4 + per_edge)
        # fewest tokens the largest cycle can take: as many 1-token names as exist
        singles = min(max_nodes, len(UPPER))
        min_cycle = 2 * (singles + 2 * (max_nodes - singles)) + max_nodes * per_edge
        if self.cycle_tokens < min_cycle:
            raise DataError(
                f"--cycle-tokens {self.cycle_tokens} cannot hold {max_nodes} nodes (need >= {min_cycle})"
            )
        per_query = len(str(max(max_k, *self.test_ks))) + 2 + 1 + 2
        self.query_tokens = query_tokens or n_queries * per_query
        if self.query_tokens < n_queries * per_query:
            raise DataError(f"--query-tokens must be >= {n_queries * per_query} for {n_queries} queries")

    @property
    def total_tokens(self) -> int:
        return self.cycle_tokens + self.query_tokens

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_nodes": self.max_nodes,
            "min_nodes": self.min_nodes,
            "n_queries": self.n_queries,
            "max_k": self.max_k,
            "train_k": f"uniform in [1, {self.max_k}]",
            "test_ks": self.test_ks,
            "cycle_tokens": self.cycle_tokens,
            "query_tokens": self.query_tokens,
            "total_tokens": self.total_tokens,
            "arrow": self.arrow,
            "edge_sep": self.edge_sep,
            "names": "upper-case letter + optional lower-case letter (1-2 tokens)",
            "window": self.cycle_tokens // 4,  # the cycle spans four windows (paper: 300 tokens, L = 75)
        }


def _names(rng: np.random.Generator, n: int, cfg: DepoConfig) -> list[str]:
    """n distinct names, each 1 or 2 tokens (fair coin), shortened if the cycle would not fit."""
    long = rng.random(n) < 0.5
    n_short = min(int((~long).sum()), len(UPPER))
    n_short = max(n_short, n - len(UPPER) * len(LOWER))
    per_edge = len(cfg.arrow) + len(cfg.edge_sep)
    while 2 * (n_short + 2 * (n - n_short)) + n * per_edge > cfg.cycle_tokens:
        n_short += 1  # feasible by the config check
    short = [UPPER[i] for i in rng.choice(len(UPPER), n_short, replace=False)]
    pairs = rng.choice(len(UPPER) * len(LOWER), n - n_short, replace=False)
    longs = [UPPER[p // len(LOWER)] + LOWER[p % len(LOWER)] for p in pairs]
    names = short + longs
    return [names[i] for i in rng.permutation(n)]


def make_example(rng: np.random.Generator, cfg: DepoConfig, split: str) -> dict[str, Any]:
    """One Depo example as text pieces plus its answers (no tokenization)."""
    n = int(rng.integers(cfg.min_nodes, cfg.max_nodes + 1))
    names = _names(rng, n, cfg)  # the cycle is names[0] -> names[1] -> ... -> names[n-1] -> names[0]
    order = rng.permutation(n)
    cycle = "".join(f"{names[i]}{cfg.arrow}{names[(i + 1) % n]}{cfg.edge_sep}" for i in order)
    starts = rng.choice(n, cfg.n_queries, replace=n < cfg.n_queries)
    if split == "train":
        ks = rng.integers(1, cfg.max_k + 1, size=cfg.n_queries)
    else:
        ks = np.asarray(cfg.test_ks)[rng.integers(0, len(cfg.test_ks), size=cfg.n_queries)]
    queries = [
        (f"{int(k)}{names[s]}:", names[(int(s) + int(k)) % n]) for s, k in zip(starts, ks, strict=True)
    ]
    return {"n": n, "cycle": cycle, "queries": queries, "ks": [int(k) for k in ks]}


def encode_example(ex: dict[str, Any], cfg: DepoConfig, vocab: dict[str, int], pad_id: int) -> dict[str, Any]:
    cycle_ids = [vocab[c] for c in ex["cycle"]]
    left = cfg.cycle_tokens - len(cycle_ids)
    ids = [pad_id] * left + cycle_ids
    loss = [0] * len(ids)
    starts, lengths = [], []
    text = ex["cycle"]
    for prompt, answer in ex["queries"]:
        ids += [vocab[c] for c in prompt]
        loss += [0] * len(prompt)
        starts.append(len(ids))
        lengths.append(len(answer))
        ids += [vocab[c] for c in answer]
        loss += [1] * len(answer)
        text += prompt + answer
    right = cfg.total_tokens - len(ids)
    attn = [0] * left + [1] * (len(ids) - left) + [0] * right
    ids += [pad_id] * right
    loss += [0] * right
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "loss_mask": loss,
        "answer_starts": starts,
        "answer_lengths": lengths,
        "bucket": ex["ks"],
        "text": text,
    }


def make_rows(rng: np.random.Generator, n: int, split: str, cfg: DepoConfig, tokenizer) -> Rows:
    vocab = tokenizer.get_vocab()
    rows = [
        encode_example(make_example(rng, cfg, split), cfg, vocab, tokenizer.pad_token_id) for _ in range(n)
    ]
    cols: dict[str, Any] = {}
    for name in ("input_ids", "attention_mask", "loss_mask", "answer_starts", "answer_lengths", "bucket"):
        dtype = np.int8 if name in ("attention_mask", "loss_mask") else np.int32
        cols[name] = np.asarray([r[name] for r in rows], dtype=dtype).reshape(n, -1)
    cols["text"] = [r["text"] for r in rows]
    return Rows(cols, row_keys(cols["input_ids"]))


def generate(
    n_train: int = 10_000,
    n_test: int = 1_000,
    seed: int = 0,
    *,
    config: DepoConfig | None = None,
    tokenizer=None,
    progress: bool = True,
) -> tuple[dict[str, Rows], dict[str, Any]]:
    from sleepify.data.tokenizer import build_char_tokenizer

    cfg = config or DepoConfig()
    tokenizer = tokenizer or build_char_tokenizer()

    def make(rng: np.random.Generator, n: int, split: str) -> Rows:
        return make_rows(rng, n, split, cfg, tokenizer)

    splits = generate_splits(make, n_train, n_test, seed, chunk=2_000, desc="depo", progress=progress)
    meta = {
        "task": "depo",
        "params": {"n_train": n_train, "n_test": n_test, "seed": seed, **cfg.as_dict()},
        "bucket": "k (hops) of each query",
        "exact_match": "answer",
    }
    return splits, meta
