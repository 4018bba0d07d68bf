"""Comparison data for reward modelling (docs/algorithms.md §2): K responses to one prompt, ranked by a labeller.

One :class:`Comparison` holds a prompt, ``K >= 2`` responses and a ranking in *tiers* (best first,
ties grouped), e.g. ``[[2], [0, 3], [1]]``. :meth:`Comparison.pairs` expands it into the
``(winner, loser)`` pairs of the InstructGPT loss (docs/algorithms.md §2.b; ties give no pair); a best-of-K label
(Ziegler, docs/algorithms.md §2.a) keeps ``best`` so the softmax loss can use it directly.

JSONL rows accepted by :func:`parse_comparison` / :func:`load_comparisons` (one shape per row; K may
vary between rows; an optional ``"meta"`` object is kept as it is):

- ``{"prompt": "...", "responses": ["...", ...], "best": i}``: best-of-K (docs/algorithms.md §2.a).
- ``{"prompt": "...", "responses": ["...", ...], "ranking": [2, [0, 3], 1]}``: best first, ties as
  nested lists (docs/algorithms.md §2.b); the ranking must be a permutation of ``range(K)``.
- ``{"prompt": "...", "chosen": "...", "rejected": "..."}``: a pairwise label, read as best-of-2.

Other fields are refused rather than ignored, so that a typo (``"rank"``, ``"best_idx"``) cannot
silently turn a label into something else; extra information belongs in ``"meta"``.

:func:`load_hh_rlhf` reads Anthropic's HH-RLHF files, :func:`split_comparisons` makes a train/val
split in which no prompt lands on both sides (a shared prompt would leak the validation labels).
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from feedback_lm.data.files import read_jsonl, write_jsonl
from feedback_lm.errors import UserError

__all__ = [
    "Comparison",
    "degenerate",
    "load_comparisons",
    "load_hh_rlhf",
    "parse_comparison",
    "split_comparisons",
    "write_comparisons",
]

log = logging.getLogger(__name__)

ACCEPTED_SHAPES = (
    '{"prompt": "...", "responses": ["...", ...], "best": i} or '
    '{"prompt": "...", "responses": ["...", ...], "ranking": [i, [j, k], ...]} (best first, ties as '
    'nested lists) or {"prompt": "...", "chosen": "...", "rejected": "..."}; each may add "meta": {...}'
)
_SHAPE_KEYS = (
    frozenset({"prompt", "responses", "best"}),
    frozenset({"prompt", "responses", "ranking"}),
    frozenset({"prompt", "chosen", "rejected"}),
)
_ASSISTANT = "\n\nAssistant:"


@dataclass
class Comparison:
    """A labelled set of responses to one prompt.

    Attributes:
        prompt: the prompt text the responses continue.
        responses: the ``K >= 2`` candidate responses.
        tiers: the ranking, best tier first; responses in one tier are tied. A partition of
            ``range(K)`` into at least two non-empty tiers, e.g. ``[[2], [0, 3], [1]]``.
        best: the winner of a best-of-K label (then ``tiers == [[best], [the others, ascending]]``),
            or ``None`` for a ranking.
        meta: free-form information about the row (source, line, labeller, ...), kept as it is.

    Raises:
        UserError: the fields are inconsistent (see :func:`parse_comparison` for the rules).
    """

    prompt: str
    responses: list[str]
    tiers: list[list[int]]
    best: int | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.prompt, self.responses, self.tiers, self.best, self.meta, where="Comparison")

    def pairs(self) -> list[tuple[int, int]]:
        """All ``(winner, loser)`` index pairs with the winner in a strictly better tier.

        Tied responses give no pair (docs/algorithms.md §2.b). A strict ranking of K gives ``K(K-1)/2`` pairs,
        best-of-K gives ``K-1``. Order: by winner tier, then loser tier, then position in the tier.
        """
        return [
            (w, l)
            for i, upper in enumerate(self.tiers)
            for lower in self.tiers[i + 1 :]
            for w in upper
            for l in lower
        ]

    def to_row(self) -> dict:
        """The canonical JSONL row: ``best`` for best-of-K, else ``ranking`` (single items as ints)."""
        row: dict = {"prompt": self.prompt, "responses": list(self.responses)}
        if self.best is not None:
            row["best"] = self.best
        else:
            row["ranking"] = [t[0] if len(t) == 1 else list(t) for t in self.tiers]
        if self.meta:
            row["meta"] = self.meta
        return row


def parse_comparison(row: dict, where: str) -> Comparison:
    """Turn one JSONL row into a :class:`Comparison` (shapes in the module docstring).

    Args:
        row: the decoded JSON value of one line.
        where: where the row came from, for messages, e.g. ``"prefs.jsonl:7"``.

    Raises:
        UserError: the row has none of the accepted shapes, or its values are wrong: a non-string
            prompt or response, fewer than 2 responses, ``best`` not an int in ``range(K)``, a
            ranking that is not a permutation of ``range(K)``, both ``best`` and ``ranking``, or a
            ranking with every response tied (no pair to learn from). The message starts with
            ``where`` and lists the accepted shapes.
    """
    if not isinstance(row, dict):
        _fail(where, f"expected a JSON object, got {_preview(row)}")
    if "best" in row and "ranking" in row:
        _fail(where, 'has both "best" and "ranking"; give one of them')
    keys = set(row) - {"meta"}
    if keys not in _SHAPE_KEYS:
        _fail(where, f"has fields {sorted(row)}, which match none of the accepted shapes")
    meta = row.get("meta", {})
    if not isinstance(meta, dict):
        _fail(where, f'"meta" must be an object, got {_preview(meta)}')

    if "chosen" in keys:
        responses = [row["chosen"], row["rejected"]]
        for key in ("chosen", "rejected"):
            if not isinstance(row[key], str):
                _fail(where, f'"{key}" must be a string, got {_preview(row[key])}')
        best: int | None = 0
        tiers = [[0], [1]]
    else:
        responses = row["responses"]
        if not isinstance(responses, list):
            _fail(where, f'"responses" must be a list of strings, got {_preview(responses)}')
        if "best" in keys:
            best = row["best"]
            # bool is an int subclass: `"best": true` is a mistake, not response 1.
            if not isinstance(best, int) or isinstance(best, bool):
                _fail(where, f'"best" must be an integer index into "responses", got {_preview(best)}')
            tiers = [[best], [i for i in range(len(responses)) if i != best]]
        else:
            best = None
            tiers = _ranking_to_tiers(row["ranking"], where)
    _check(row["prompt"], responses, tiers, best, meta, where)
    return Comparison(prompt=row["prompt"], responses=list(responses), tiers=tiers, best=best, meta=meta)


def load_comparisons(path: str | os.PathLike, skip_degenerate: bool = False,
                     skipped: dict[str, int] | None = None) -> list[Comparison]:
    """Read a JSONL (or ``.jsonl.gz``) file of comparison rows; blank lines are skipped.

    A degenerate row (the same text ranked above itself: ``chosen == rejected``, or two identical
    responses in different tiers) teaches the reward model nothing but noise, so it is refused, or
    skipped and counted in ``skipped["degenerate"]`` when ``skip_degenerate`` is set.

    Raises:
        UserError: the file is missing, empty or not UTF-8 text, a line is not valid JSON or not an
            accepted row, or a row is degenerate; the message names ``path:LINE``.
    """
    comparisons, n_degenerate = [], 0
    for where, _, row in read_jsonl(path, what="comparison"):
        c = parse_comparison(row, where)
        problem = degenerate(c)
        if problem is None:
            comparisons.append(c)
        elif skip_degenerate:
            n_degenerate += 1
        else:
            raise UserError(f"{where}: {problem}, so the row teaches nothing. Fix or remove it, or skip such rows "
                            f"with data.skip_degenerate=true")
    if n_degenerate:
        log.warning("%s: skipped %d degenerate comparison rows", path, n_degenerate)
        if skipped is not None:
            skipped["degenerate"] = skipped.get("degenerate", 0) + n_degenerate
    if not comparisons:
        raise UserError(f"{path} has no rows; each line must be one of: {ACCEPTED_SHAPES}")
    return comparisons


def degenerate(c: Comparison) -> str | None:
    """Why ``c`` ranks a text against itself (identical responses in different tiers), or None."""
    tier_of = {i: t for t, tier in enumerate(c.tiers) for i in tier}
    first: dict[str, int] = {}
    for i, r in enumerate(c.responses):
        j = first.setdefault(r, i)
        if j != i and tier_of[j] != tier_of[i]:
            if c.best is not None and len(c.responses) == 2:
                return "chosen and rejected are the same text"
            return f"responses {j} and {i} are the same text but ranked apart"
    return None


def write_comparisons(path: str | os.PathLike, comparisons: Iterable[Comparison]) -> None:
    """Write comparisons as canonical JSONL rows (:meth:`Comparison.to_row`), atomically."""
    write_jsonl(path, (c.to_row() for c in comparisons))


def load_hh_rlhf(path: str | os.PathLike, limit: int | None = None,
                 skipped: dict[str, int] | None = None) -> list[Comparison]:
    """Read Anthropic HH-RLHF rows ``{"chosen": dialogue, "rejected": dialogue}`` as pairwise labels.

    Both dialogues share their history and differ in the final Assistant turn. The prompt is the
    shared text up to and including the last ``"\\n\\nAssistant:"`` marker they have in common; each
    response is the rest of its dialogue with one leading space removed, so
    ``prompt + " " + response`` gives the original text back. Rows that cannot be a label are skipped
    and counted in a warning: ``chosen == rejected``, no shared ``"\\n\\nAssistant:"`` marker, or an
    empty (whitespace-only) final turn (the harmless-base test split has 4 such rows, all with an
    empty ``chosen`` turn).

    Args:
        path: a ``.jsonl`` or ``.jsonl.gz`` file, e.g. ``hh-rlhf/harmless-base/test.jsonl.gz``.
        limit: stop after this many comparisons (``None``: all).
        skipped: if given, the skipped rows are counted into it by reason.

    Returns:
        Best-of-2 comparisons (``best=0`` is the chosen turn) with
        ``meta={"source": "hh-rlhf", "line": n}``.

    Raises:
        UserError: the file is missing or unreadable, or a line is not ``{"chosen": str, "rejected": str}``.
    """
    shape = '{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}'
    comparisons: list[Comparison] = []
    counts = {"chosen == rejected": 0, 'no shared "\\n\\nAssistant:" turn': 0, "empty final turn": 0}
    for where, line_no, row in read_jsonl(path, what="HH-RLHF"):
        if limit is not None and len(comparisons) >= limit:
            break
        if not (isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("chosen", "rejected"))):
            raise UserError(f"{where}: not an HH-RLHF row (got {_preview(row)}); expected {shape}")
        chosen, rejected = row["chosen"], row["rejected"]
        if chosen == rejected:
            counts["chosen == rejected"] += 1
            continue
        cut = os.path.commonprefix([chosen, rejected]).rfind(_ASSISTANT)
        if cut < 0:
            counts['no shared "\\n\\nAssistant:" turn'] += 1
            continue
        cut += len(_ASSISTANT)
        responses = [chosen[cut:].removeprefix(" "), rejected[cut:].removeprefix(" ")]
        if not all(r.strip() for r in responses):
            counts["empty final turn"] += 1
            continue
        comparisons.append(
            Comparison(
                prompt=chosen[:cut],
                responses=responses,
                tiers=[[0], [1]],
                best=0,
                meta={"source": "hh-rlhf", "line": line_no},
            )
        )
    if any(counts.values()):
        reasons = ", ".join(f"{n} {why}" for why, n in counts.items() if n)
        log.warning("%s: skipped %d HH-RLHF rows (%s)", path, sum(counts.values()), reasons)
    if skipped is not None:
        for why, n in counts.items():
            skipped[why] = skipped.get(why, 0) + n
    if not comparisons:
        raise UserError(f"{path} gave no usable HH-RLHF comparisons; expected lines like {shape}")
    return comparisons


def split_comparisons(
    comparisons: Sequence[Comparison], val_fraction: float, seed: int
) -> tuple[list[Comparison], list[Comparison]]:
    """Seeded train/val split by prompt: all comparisons of one prompt go to the same side.

    The distinct prompts are shuffled with ``random.Random(seed)`` and ``round(val_fraction * P)``
    of them (at least 1 when ``val_fraction > 0``, at most ``P - 1`` so train keeps one when
    ``P >= 2``) go to validation. Both lists keep the input order. The result depends only on the
    input and ``seed`` (no global random state is read or changed).

    Returns:
        ``(train, val)``.

    Raises:
        UserError: ``val_fraction`` is not in ``[0, 1)``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    prompts = list(dict.fromkeys(c.prompt for c in comparisons))  # distinct, first-seen order
    n_val = round(val_fraction * len(prompts))
    if val_fraction > 0 and len(prompts) >= 2:
        n_val = min(max(n_val, 1), len(prompts) - 1)
    random.Random(seed).shuffle(prompts)
    val_prompts = set(prompts[:n_val])
    train = [c for c in comparisons if c.prompt not in val_prompts]
    val = [c for c in comparisons if c.prompt in val_prompts]
    return train, val


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _ranking_to_tiers(ranking, where: str) -> list[list[int]]:
    """``[2, [0, 3], 1]`` -> ``[[2], [0, 3], [1]]``; :func:`_check` then checks the entries."""
    if not isinstance(ranking, list):
        _fail(where, f'"ranking" must be a list of indices, best first, got {_preview(ranking)}')
    tiers = []
    for item in ranking:
        if item == []:
            _fail(where, f'"ranking" {_preview(ranking)} has an empty tie group []')
        tiers.append(list(item) if isinstance(item, list) else [item])
    return tiers


def _check(prompt, responses, tiers, best, meta, where: str) -> None:
    """The rules every comparison obeys, whatever shape it came from."""
    if not isinstance(prompt, str):
        _fail(where, f'"prompt" must be a string, got {_preview(prompt)}')
    if not isinstance(responses, list) or len(responses) < 2:
        _fail(where, f"needs at least 2 responses to compare, got {_preview(responses)}")
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            _fail(where, f"response {i} must be a string, got {_preview(r)}")
    if not isinstance(meta, dict):
        _fail(where, f'"meta" must be an object, got {_preview(meta)}')
    k = len(responses)
    if best is not None:
        if not isinstance(best, int) or isinstance(best, bool) or not 0 <= best < k:
            _fail(where, f'"best" must be an integer in 0..{k - 1} (there are {k} responses), got {best!r}')
        if tiers != [[best], [i for i in range(k) if i != best]]:
            _fail(where, f"tiers {tiers!r} do not match best={best} (expected [[best], [the others]])")
        return
    if not isinstance(tiers, list) or not all(isinstance(t, list) and t for t in tiers):
        _fail(where, f"ranking must be a list of indices or non-empty tie groups, got {_preview(tiers)}")
    ranked = [i for tier in tiers for i in tier]
    for i in ranked:
        if not isinstance(i, int) or isinstance(i, bool):
            _fail(
                where,
                f"ranking entries must be integer indices, or lists of them for ties (one level of "
                f"nesting), got {_preview(i)}",
            )
    if sorted(ranked) != list(range(k)):
        problems = []
        missing = sorted(set(range(k)) - set(ranked))
        dup = sorted({i for i in ranked if ranked.count(i) > 1})
        bad = sorted({i for i in ranked if not 0 <= i < k})
        if missing:
            problems.append(f"missing {missing}")
        if dup:
            problems.append(f"repeated {dup}")
        if bad:
            problems.append(f"out of range {bad}")
        _fail(
            where,
            f"ranking must list every response index 0..{k - 1} exactly once ({k} responses), "
            f"but it has {', '.join(problems)}",
        )
    if len(tiers) < 2:
        _fail(where, "ranking ties every response, so it gives no (better, worse) pair to learn from")


def _fail(where: str, problem: str):
    raise UserError(f"{where}: {problem}. Accepted rows: {ACCEPTED_SHAPES}")


def _preview(value, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
