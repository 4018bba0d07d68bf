"""A stream of pretraining text for algorithms that mix a language-modelling loss into RL (PPO-ptx,
InstructGPT arXiv 2203.02155 §3.5 Eq. 2): the task's demonstrations or a plain-text corpus."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from feedback_lm.data.files import load_text
from feedback_lm.errors import UserError


class PtxStream:
    """An endless, seeded stream of pretraining examples.

    Each item is a ``(prompt, text)`` pair: task demonstrations keep their prompt (so that an
    encoder-decoder model conditions on it); raw text has an empty prompt and is scored on every token.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], seed: int = 0):
        if not pairs:
            raise UserError("PPO-ptx: the pretraining data is empty (algo.ptx_data)")
        self.pairs = list(pairs)
        self.rng = random.Random(seed)

    @classmethod
    def from_text_file(cls, path: str, chunk_chars: int, seed: int = 0) -> PtxStream:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"algo.ptx_data={path}: no such file. Give a plain-text file, or 'demos' to use the "
                            f"task's demonstrations")
        text = load_text(p, "algo.ptx_data")  # a binary or non-UTF-8 file is refused, naming the line
        chunks = [text[i: i + chunk_chars] for i in range(0, len(text), chunk_chars)]
        return cls([("", c) for c in chunks if c.strip()], seed)

    @classmethod
    def from_config(cls, ptx_data: str, datamodule: Any, chunk_chars: int, seed: int = 0) -> PtxStream:
        """``ptx_data="demos"``: the datamodule's demonstrations (prompt/response rows); else a text file."""
        if ptx_data != "demos":
            return cls.from_text_file(ptx_data, chunk_chars, seed)
        rows = getattr(datamodule, "train_rows", None)
        if not rows:
            datamodule.setup("fit")
            rows = getattr(datamodule, "train_rows", None)
        if not rows:
            raise UserError("algo.ptx_data=demos needs a datamodule with demonstrations (prompt/response rows); "
                            "give a text file instead: algo.ptx_data=<path>")
        return cls([(r["prompt"], r["response"]) for r in rows], seed)

    def next(self, n: int) -> list[tuple[str, str]]:
        return [self.pairs[self.rng.randrange(len(self.pairs))] for _ in range(n)]

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.setstate(state["rng"])
