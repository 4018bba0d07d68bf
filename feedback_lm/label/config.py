"""A labeling campaign's settings, and the check of one submitted label against them.

:class:`CampaignConfig` is what ``python -m feedback_lm.label create`` stores with the campaign;
:func:`validate_label` turns the JSON a labeler submits into the stored form or refuses it with one
message that says what is wrong (nothing is written for a refused label).

The submitted label (the body of ``POST /api/assignments/{id}/label``)::

    {"idempotency_key": "a1b2c3d4...",          # one per assignment; a retry sends the same key
     "best": 2,                                 # mode "best" (Ziegler et al. 2019 §2), or
     "ranking": [2, [0, 3], 1],                 # mode "rank": best first, ties nested (InstructGPT §3.5)
     "likert": [5, 2, 7, 4],                    # 1..7 per response, when the campaign asks for it
     "flags": [[], ["harmful"], [], []],        # per response, names from the campaign's flags
     "comments": [{}, {"harmful": "insults"}, {}, {}]}  # optional: a note per flag that is on

The web page sends indices as *display positions* (the page never learns how responses are stored);
:meth:`ValidLabel.to_stored` maps them back with the assignment's display order, kept on the server.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from feedback_lm.errors import UserError

__all__ = ["CampaignConfig", "LabelError", "ValidLabel", "tiers_to_ranking", "validate_label"]

MODES = ("best", "rank")
LIKERT_RANGE = (1, 7)  # InstructGPT's 1-7 overall quality scale (Ouyang et al. 2022, appendix B)
_FLAG_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_KEY = re.compile(r"^[A-Za-z0-9_-]{8,100}$")
_LABEL_FIELDS = {"idempotency_key", "best", "ranking", "likert", "flags", "comments"}
MAX_COMMENT_CHARS = 2000


class LabelError(UserError):
    """A submitted label is malformed or does not fit the item (HTTP 422)."""


@dataclass
class CampaignConfig:
    """How items of a campaign are labeled.

    Attributes:
        mode: ``"best"`` (pick the best of K) or ``"rank"`` (order all K, ties allowed).
        likert: ask for a 1-7 quality rating of every response.
        flags: names of per-response yes/no flags, e.g. ``["harmful", "fails_instruction"]``.
        overlap: how many different people label each (non-gold) item. Gold items go to everyone.
        lease_seconds: how long an assignment is held for its labeler before it returns to the pool;
            saving a draft renews it.
        instructions: shown above every item.
        source: provenance of the sampled items (policy, sampling settings, seed), for the record.
    """

    mode: str = "rank"
    likert: bool = False
    flags: list[str] = field(default_factory=list)
    overlap: int = 1
    lease_seconds: float = 900.0
    instructions: str = ""
    source: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not isinstance(self.overlap, int) or isinstance(self.overlap, bool) or self.overlap < 1:
            raise UserError(f"overlap (people per item) must be an integer >= 1, got {self.overlap!r}")
        if not isinstance(self.lease_seconds, (int, float)) or self.lease_seconds <= 0:
            raise UserError(f"lease_seconds must be > 0, got {self.lease_seconds!r}")
        for name in self.flags:
            if not isinstance(name, str) or not _FLAG_NAME.match(name):
                raise UserError(f"flag names must be lowercase words like 'harmful' or 'fails_instruction' "
                                f"(a-z, 0-9, _; up to 40 characters), got {name!r}")
        if len(set(self.flags)) != len(self.flags):
            raise UserError(f"flag names must be distinct, got {self.flags}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CampaignConfig:
        return cls(**data)


@dataclass
class ValidLabel:
    """A checked label: ``tiers`` best first (ties grouped), ``best`` in best mode, per-response extras."""

    idempotency_key: str
    tiers: list[list[int]]
    best: int | None
    likert: list[int] | None
    flags: list[list[str]]
    comments: list[dict[str, str]]

    def to_stored(self, order: list[int]) -> ValidLabel:
        """The same label with display positions turned into stored indices (``order[pos]`` = index)."""
        def per_response(values: list) -> list:
            out = [None] * len(order)
            for pos, value in enumerate(values):
                out[order[pos]] = value
            return out

        return ValidLabel(self.idempotency_key, [sorted(order[p] for p in t) for t in self.tiers],
                          None if self.best is None else order[self.best],
                          None if self.likert is None else per_response(self.likert),
                          per_response(self.flags), per_response(self.comments))

    def to_shown(self, order: list[int]) -> ValidLabel:
        """The inverse of :meth:`to_stored`: stored indices as display positions."""
        return self.to_stored([order.index(i) for i in range(len(order))])


def validate_label(payload: object, k: int, config: CampaignConfig) -> ValidLabel:
    """Check a submitted label for an item with ``k`` responses (shape in the module docstring).

    Raises:
        LabelError: with one message naming the first problem found.
    """
    if not isinstance(payload, dict):
        raise LabelError(f"a label must be a JSON object, got {type(payload).__name__}")
    unknown = sorted(set(payload) - _LABEL_FIELDS)
    if unknown:
        raise LabelError(f"unknown field(s) {unknown}; a label has {sorted(_LABEL_FIELDS)}")
    key = payload.get("idempotency_key")
    if not isinstance(key, str) or not _KEY.match(key):
        raise LabelError("idempotency_key must be a string of 8-100 letters, digits, '-' or '_' "
                         "(one per assignment, repeated on a retry)")

    if config.mode == "best":
        if "ranking" in payload:
            raise LabelError('this campaign asks for the best response ("best": index), not a "ranking"')
        best = payload.get("best")
        if not _is_int(best) or not 0 <= best < k:
            raise LabelError(f'"best" must be the index of one of the {k} responses (0..{k - 1}), got {best!r}')
        tiers = [[best], [i for i in range(k) if i != best]]
    else:
        if "best" in payload:
            raise LabelError('this campaign asks for a "ranking" of all responses, not "best"')
        best, tiers = None, _ranking_tiers(payload.get("ranking"), k)

    likert = payload.get("likert")
    if config.likert:
        if not isinstance(likert, list) or len(likert) != k:
            raise LabelError(f'"likert" must rate each of the {k} responses 1..7, got {likert!r}')
        lo, hi = LIKERT_RANGE
        bad = [i for i, v in enumerate(likert) if not _is_int(v) or not lo <= v <= hi]
        if bad:
            raise LabelError(f'"likert" ratings must be integers {lo}..{hi}; response {bad[0]} has {likert[bad[0]]!r}')
    elif likert is not None:
        raise LabelError('this campaign does not ask for Likert ratings; leave "likert" out')

    flags = payload.get("flags")
    if flags is None:
        flags = [[] for _ in range(k)]
    if not isinstance(flags, list) or len(flags) != k or not all(isinstance(f, list) for f in flags):
        raise LabelError(f'"flags" must be a list of {k} lists of flag names (one per response), got {flags!r}')
    for i, names in enumerate(flags):
        for name in names:
            if name not in config.flags:
                raise LabelError(f"response {i}: unknown flag {name!r}; this campaign's flags are {config.flags}")
        if len(set(names)) != len(names):
            raise LabelError(f"response {i}: flag listed twice in {names}")
    comments = payload.get("comments")
    if comments is None:
        comments = [{} for _ in range(k)]
    if not isinstance(comments, list) or len(comments) != k or not all(isinstance(c, dict) for c in comments):
        raise LabelError(f'"comments" must be a list of {k} objects (flag name -> note), got {comments!r:.80}')
    for i, notes in enumerate(comments):
        for name, note in notes.items():
            if name not in flags[i]:
                raise LabelError(f"response {i}: a comment on flag {name!r}, which is not set on it")
            if not isinstance(note, str) or len(note) > MAX_COMMENT_CHARS:
                raise LabelError(f"response {i}: the comment on {name!r} must be text of at most "
                                 f"{MAX_COMMENT_CHARS} characters")
    comments = [{n: c.strip() for n, c in sorted(notes.items()) if c.strip()} for notes in comments]
    return ValidLabel(key, tiers, best, likert, [sorted(f) for f in flags], comments)


def tiers_to_ranking(tiers: list[list[int]]) -> list:
    """``[[2], [0, 3], [1]]`` -> ``[2, [0, 3], 1]`` (the JSONL form)."""
    return [t[0] if len(t) == 1 else list(t) for t in tiers]


def _ranking_tiers(ranking: object, k: int) -> list[list[int]]:
    shape = f'"ranking" must list every response index 0..{k - 1} once, best first, ties nested (e.g. [2, [0, 3], 1])'
    if not isinstance(ranking, list) or not ranking:
        raise LabelError(f"{shape}; got {ranking!r}")
    tiers = []
    for entry in ranking:
        tier = entry if isinstance(entry, list) else [entry]
        if not tier or not all(_is_int(i) for i in tier):
            raise LabelError(f"{shape}; got {ranking!r}")
        tiers.append(sorted(tier))
    flat = [i for t in tiers for i in t]
    if sorted(flat) != list(range(k)):
        raise LabelError(f"{shape}; got {ranking!r}")
    return tiers


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
