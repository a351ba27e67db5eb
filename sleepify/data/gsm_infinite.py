"""GSM-Infinite-style task (paper §6.3): our own procedural generator of long arithmetic word problems.

A problem is a set of quantities "<Person>'s <item>", each defined by exactly one sentence: either a
given value or one arithmetic operation over one or two other quantities / a constant. The question
asks for one quantity whose computation needs exactly ``ops`` operations; the other sentences are
distractors in the same style (they may even use the needed quantities, but the asked quantity never
depends on them), added until the problem reaches a target length in tokens. Sentences are shuffled;
there is no chain of thought. All values stay integers in ``[0, max_value]``.

Layout (the question is BEFORE the context)::

    Question: How many <item> does <Person> have?
    Problem: <sentence> <sentence> ... <sentence>
    Answer: <value>

Only the answer tokens carry ``loss_mask = 1``; ``bucket = [ops]``. Sentence forms (one op each,
except the givens)::

    <P> has <v> <item>.                                            given (0 ops)
    <P> has <c> more <item> than <Q>'s <item2>.                    + c
    <P> has <c> fewer <item> than <Q>'s <item2>.                   - c
    <P> has <c> times as many <item> as <Q>'s <item2>.             * c
    <P> has as many <item> as <Q>'s <item2> and <R>'s <item3> combined.   a + b
    <P> has as many <item> as <Q>'s <item2> minus <R>'s <item3>.          a - b
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sleepify.data.common import (
    DataError,
    Rows,
    encode_with_answer,
    generate_splits,
    rows_from_dicts,
)

PERSONS = [
    "Ava",
    "Ben",
    "Cara",
    "Dan",
    "Eli",
    "Fay",
    "Gus",
    "Hana",
    "Ivan",
    "Jade",
    "Kai",
    "Lena",
    "Milo",
    "Nora",
    "Omar",
    "Pia",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
    "Uri",
    "Vera",
    "Wes",
    "Xena",
    "Yuri",
    "Zoe",
    "Abe",
    "Bea",
    "Cole",
    "Dora",
    "Emil",
    "Finn",
    "Gia",
    "Hugo",
    "Iris",
    "Jon",
    "Kira",
    "Leo",
    "Maya",
    "Ned",
    "Olga",
    "Paul",
    "Rita",
    "Seth",
    "Tess",
    "Umar",
    "Vik",
    "Wren",
    "Yara",
    "Zack",
]
ITEMS = [
    "apples",
    "pears",
    "plums",
    "figs",
    "lemons",
    "limes",
    "grapes",
    "cherries",
    "peaches",
    "melons",
    "carrots",
    "onions",
    "beans",
    "peas",
    "potatoes",
    "tomatoes",
    "marbles",
    "stamps",
    "coins",
    "shells",
    "buttons",
    "pencils",
    "crayons",
    "stickers",
    "books",
    "cards",
    "candles",
    "cups",
    "plates",
    "spoons",
]
PAPER_LENGTH = (2000, 3300)


class Problem:
    """A generated problem: quantity definitions (in creation order), the asked quantity, its value."""

    def __init__(self) -> None:
        self.defs: dict[tuple[str, str], tuple] = {}  # q -> ("given", v) | (op, a, b_or_c)
        self.values: dict[tuple[str, str], int] = {}
        self.order: list[tuple[str, str]] = []

    def add(self, q: tuple[str, str], definition: tuple, value: int) -> None:
        self.defs[q] = definition
        self.values[q] = value
        self.order.append(q)


def _ref(q: tuple[str, str]) -> str:
    return f"{q[0]}'s {q[1]}"


def sentence(q: tuple[str, str], d: tuple) -> str:
    p, item = q
    kind = d[0]
    if kind == "given":
        return f"{p} has {d[1]} {item}."
    if kind == "add_c":
        return f"{p} has {d[2]} more {item} than {_ref(d[1])}."
    if kind == "sub_c":
        return f"{p} has {d[2]} fewer {item} than {_ref(d[1])}."
    if kind == "mul_c":
        return f"{p} has {d[2]} times as many {item} as {_ref(d[1])}."
    if kind == "add":
        return f"{p} has as many {item} as {_ref(d[1])} and {_ref(d[2])} combined."
    if kind == "sub":
        return f"{p} has as many {item} as {_ref(d[1])} minus {_ref(d[2])}."
    raise ValueError(kind)


class Generator:
    def __init__(self, rng: np.random.Generator, max_value: int) -> None:
        self.rng = rng
        self.max_value = max_value
        self.problem = Problem()
        self.free = [(p, i) for p in PERSONS for i in ITEMS]
        self.n_free = len(self.free)

    def fresh(self) -> tuple[str, str]:
        """A quantity not defined yet (partial Fisher-Yates draw without replacement)."""
        if self.n_free == 0:
            raise DataError("ran out of distinct quantities — lower the target length")
        j = int(self.rng.integers(0, self.n_free))
        self.n_free -= 1
        self.free[j], self.free[self.n_free] = self.free[self.n_free], self.free[j]
        return self.free[self.n_free]

    def given(self) -> tuple[str, str]:
        q = self.fresh()
        v = int(self.rng.integers(1, min(20, self.max_value) + 1))
        self.problem.add(q, ("given", v), v)
        return q

    def op(self, a: tuple[str, str], b: tuple[str, str] | None) -> tuple[str, str]:
        """Define a fresh quantity by one operation on ``a`` (and ``b`` for two-operand ops)."""
        va = self.problem.values[a]
        rng, top = self.rng, self.max_value
        options: list[tuple[tuple, int]] = []
        if b is not None:
            vb = self.problem.values[b]
            if va + vb <= top:
                options.append((("add", a, b), va + vb))
            if va - vb >= 0:
                options.append((("sub", a, b), va - vb))
            if vb - va > 0:
                options.append((("sub", b, a), vb - va))  # so a two-operand op always exists
        else:
            c = int(rng.integers(1, 11))
            if va + c <= top:
                options.append((("add_c", a, c), va + c))
            if va - c >= 0:
                options.append((("sub_c", a, c), va - c))
            m = int(rng.integers(2, 5))
            if va * m <= top:
                options.append((("mul_c", a, m), va * m))
        # never empty: va - vb or vb - va is >= 0, and va + c <= max_value or va - c >= 0 (c <= 10)
        d, v = options[int(rng.integers(0, len(options)))]
        q = self.fresh()
        self.problem.add(q, d, v)
        return q


def make_problem(rng: np.random.Generator, ops: int, max_value: int) -> tuple[Generator, tuple[str, str]]:
    """The needed part: a chain of exactly ``ops`` operations ending in the asked quantity."""
    g = Generator(rng, max_value)
    needed = [g.given()]
    cur = needed[0]
    for _ in range(ops):
        if rng.random() < 0.4:
            other = needed[int(rng.integers(0, len(needed)))] if rng.random() < 0.3 else g.given()
            if other == cur:
                other = g.given()
            if other not in needed:
                needed.append(other)
            a, b = (cur, other) if rng.random() < 0.5 else (other, cur)
            cur = g.op(a, b)
        else:
            cur = g.op(cur, None)
        needed.append(cur)
    return g, cur


def add_distractor(g: Generator) -> tuple[str, str]:
    rng = g.rng
    known = g.problem.order
    r = rng.random()
    if r < 0.35 or len(known) < 2:
        return g.given()
    a = known[int(rng.integers(0, len(known)))]
    if r < 0.7:
        return g.op(a, None)
    b = known[int(rng.integers(0, len(known)))]
    return g.op(a, b if b != a else None)


# draws of a problem whose required sentences alone exceed --max-tokens before the settings are refused
MAX_DRAWS = 20


def build_example(
    rng: np.random.Generator,
    ops: int,
    target_tokens: int,
    max_tokens: int,
    tokenizer,
    *,
    max_value: int = 99,
) -> dict[str, Any]:
    """One row of at most ``max_tokens`` tokens: a problem needing ``ops`` operations, padded with
    distractors towards ``target_tokens``. A problem whose required sentences alone are longer is drawn
    again; settings where that keeps happening are refused (never a row longer than asked for)."""
    shortest = None
    for _ in range(MAX_DRAWS):
        row = _draw_example(rng, ops, target_tokens, max_tokens, tokenizer, max_value)
        if len(row["input_ids"]) <= max_tokens:
            return row
        shortest = min(shortest or len(row["input_ids"]), len(row["input_ids"]))
    raise DataError(
        f"--max-tokens {max_tokens} is too short for problems of {ops} operations: their required "
        f"sentences alone take {shortest}+ tokens with this tokenizer; raise --max-tokens or lower --max-ops"
    )


def _draw_example(
    rng: np.random.Generator, ops: int, target_tokens: int, max_tokens: int, tokenizer, max_value: int
) -> dict[str, Any]:
    g, asked = make_problem(rng, ops, max_value)
    n_needed = len(g.problem.order)
    question = f"Question: How many {asked[1]} does {asked[0]} have?\nProblem:"
    tail = "\nAnswer:"
    answer = str(g.problem.values[asked])

    def count(texts: list[str]) -> list[int]:
        return [len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    base = sum(count([question, tail, " " + answer])) + 1
    total = base + sum(count([" " + sentence(q, g.problem.defs[q]) for q in g.problem.order]))
    keep = len(g.problem.order)
    full = False
    while total < target_tokens and not full:
        batch = [add_distractor(g) for _ in range(8)]  # tokenized together (fast for BPE tokenizers)
        for n in count([" " + sentence(q, g.problem.defs[q]) for q in batch]):
            if total >= target_tokens or total + n > max_tokens:
                full = total + n > max_tokens
                break
            total += n
            keep += 1
    # distractors drawn past the target are the newest quantities: nothing kept refers to them
    qs = g.problem.order[:keep]

    def render(qs: list[tuple[str, str]]) -> str:
        order = [qs[i] for i in rng.permutation(len(qs))]
        return question + "".join(" " + sentence(q, g.problem.defs[q]) for q in order) + tail

    prompt = render(qs)
    row = encode_with_answer(tokenizer, [prompt], [answer])[0]
    while len(row["input_ids"]) > max_tokens and len(qs) > n_needed:  # BPE merges: trim to fit
        qs = qs[:-1]
        prompt = render(qs)
        row = encode_with_answer(tokenizer, [prompt], [answer])[0]
    row["bucket"] = [ops]
    return row


def generate(
    n_train: int = 1_000,
    n_test: int = 200,
    seed: int = 0,
    *,
    min_ops: int = 1,
    max_ops: int = 8,
    min_tokens: int = PAPER_LENGTH[0],
    max_tokens: int = PAPER_LENGTH[1],
    max_value: int = 99,
    tokenizer=None,
    tokenizer_name: str | None = None,
    progress: bool = True,
) -> tuple[dict[str, Rows], dict[str, Any]]:
    from sleepify.data.tokenizer import build_char_tokenizer

    if not 1 <= min_ops <= max_ops:
        raise DataError("need 1 <= --min-ops <= --max-ops")
    if not 1 <= min_tokens <= max_tokens:
        raise DataError("need 1 <= --min-tokens <= --max-tokens")
    if max_value < 20:
        raise DataError("--max-value must be >= 20")
    tokenizer = tokenizer or build_char_tokenizer()

    def make(rng: np.random.Generator, n: int, split: str) -> Rows:
        rows = []
        for _ in range(n):
            ops = int(rng.integers(min_ops, max_ops + 1))
            target = int(rng.integers(min_tokens, max_tokens + 1))
            rows.append(build_example(rng, ops, target, max_tokens, tokenizer, max_value=max_value))
        return rows_from_dicts(rows)

    splits = generate_splits(make, n_train, n_test, seed, chunk=64, desc="gsm-infinite", progress=progress)
    meta = {
        "task": "gsm-infinite",
        "params": {
            "n_train": n_train,
            "n_test": n_test,
            "seed": seed,
            "ops": f"uniform in [{min_ops}, {max_ops}]",
            "min_ops": min_ops,
            "max_ops": max_ops,
            "length_tokens": [min_tokens, max_tokens],
            "max_value": max_value,
            "question_first": True,
            "chain_of_thought": False,
            "window": 2000,
        },
        "bucket": "ops (operations needed for the answer)",
        "exact_match": "answer",
    }
    return splits, meta


def hub_unreachable(name: str, why: str = "") -> DataError:
    reason = f" ({why})" if why else ""
    return DataError(
        f"the Hugging Face Hub is unreachable{reason}, so '{name}' cannot be loaded — drop --from-hub: "
        "the built-in gsm-infinite generator works offline"
    )
