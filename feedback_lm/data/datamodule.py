"""Datamodules by data shape. Batches are *text* (lists of strings); the policy tokenizes them, so the
data side knows nothing about causal vs encoder-decoder models or tokenizers.

``TaskDataModule`` serves prompt/response/target examples from one of three sources:

* ``generated``: a task generator in BIG-Bench Hard format (``feedback_lm.data.tasks``), made on the
  fly from a seed; this is what the embedded default uses and needs no files;
* ``bbh``: a real BBH task JSON (seeded 80/20 split, spec §5.1); the held-out 20% is the val set;
* ``jsonl``: ``{"prompt", "response"}`` rows (``target`` optional, defaults to the response).

A batch is ``{"prompt": [str], "response": [str], "target": [str]}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from feedback_lm.data import files, tasks
from feedback_lm.errors import UserError

SOURCES = ("generated", "bbh", "jsonl")


class TextDataset(Dataset):
    """A list of row dicts with string fields."""

    def __init__(self, rows: Sequence[dict[str, str]]):
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, str]:
        return self.rows[i]


def collate_text(rows: list[dict[str, str]]) -> dict[str, list[str]]:
    """Rows -> a dict of lists (one list per field)."""
    return {key: [r[key] for r in rows] for key in rows[0]}


def example_rows(examples: Sequence[tasks.Example], template: str) -> list[dict[str, str]]:
    """BBH examples -> rows with the prompt template applied and the answer as the response."""
    return [{"prompt": tasks.format_prompt(e, template), "response": tasks.format_response(e), "target": e.target}
            for e in examples]


class TaskDataModule(L.LightningDataModule):
    """Prompt/response/target text for SFT (demonstrations) and online algorithms (prompts + targets).

    Args:
        source: "generated" | "bbh" | "jsonl".
        task: generator name for ``generated`` (see ``feedback_lm.data.tasks.task_names()``); also names
            the verifier used for accuracy.
        difficulty: generator keyword arguments (``generated`` only).
        path: the BBH JSON or JSONL training file.
        val_path: JSONL validation file (``jsonl``); without it ``val_fraction`` of the rows is held out.
        num_train: generated training examples (``generated``).
        num_val: held-out examples (generated; or a cap for the other sources).
        template: prompt template with ``{input}`` (``generated`` and ``bbh``).
        batch_size: training batch size (prompts per step for online algorithms).
        eval_batch_size: validation batch size.
        val_fraction: share of JSONL rows held out when there is no ``val_path``.
        seed: data seed; train and val sets are drawn from disjoint streams and deduplicated.
        num_workers: DataLoader workers.
    """

    def __init__(self, source: str = "generated", task: str = "word_sorting",
                 difficulty: dict[str, Any] | None = None, path: str | None = None,
                 val_path: str | None = None, num_train: int = 10000, num_val: int = 200,
                 template: str = "Q: {input}\nA:", batch_size: int = 32, eval_batch_size: int = 100,
                 val_fraction: float = 0.1, seed: int = 0, num_workers: int = 0):
        super().__init__()
        if source not in SOURCES:
            raise UserError(f"unknown data.source '{source}'; choose one of {list(SOURCES)}")
        if source != "generated" and not path:
            raise UserError(f"data.source={source} needs a file: set data.path=/path/to/file")
        self.source, self.task, self.difficulty = source, task, dict(difficulty or {})
        self.path, self.val_path = path, val_path
        self.num_train, self.num_val, self.template = num_train, num_val, template
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_fraction, self.seed, self.num_workers = val_fraction, seed, num_workers
        self.train_rows: list[dict[str, str]] | None = None
        self.val_rows: list[dict[str, str]] | None = None

    # ------------------------------------------------------------------------------------ loading
    def setup(self, stage: str | None = None) -> None:
        if self.train_rows is not None:
            return
        if self.source == "generated":
            train = tasks.generate(self.task, self.num_train, seed=self.seed, **self.difficulty)
            # Held-out examples come from another seed stream; drop any that also occur in train so
            # accuracy measures generalisation, not memorisation.
            seen = {e.input for e in train}
            val = [e for e in tasks.generate(self.task, 10 * self.num_val + 20, seed=self.seed + 10_007,
                                             **self.difficulty) if e.input not in seen][: self.num_val]
            self.train_rows, self.val_rows = example_rows(train, self.template), example_rows(val, self.template)
        elif self.source == "bbh":
            self.train_rows = example_rows(files.load_bbh(self.path, split="train", seed=self.seed), self.template)
            self.val_rows = example_rows(files.load_bbh(self.path, split="test", seed=self.seed),
                                         self.template)[: self.num_val]
        else:
            rows = [_jsonl_row(r) for r in files.load_jsonl(self.path)]
            if self.val_path:
                val = [_jsonl_row(r) for r in files.load_jsonl(self.val_path)]
            else:
                n_val = max(1, int(len(rows) * self.val_fraction)) if len(rows) > 1 else 0
                rows, val = rows[n_val:], rows[:n_val]
            self.train_rows, self.val_rows = rows, val[: self.num_val]
        if not self.train_rows:
            raise UserError(f"no training examples from data.source={self.source} (path={self.path})")

    def train_dataloader(self) -> DataLoader:
        # Full batches only (every DDP rank then sees the same batch shapes), unless the data is smaller
        # than one batch.
        return DataLoader(TextDataset(self.train_rows), batch_size=self.batch_size, shuffle=True,
                          collate_fn=collate_text, num_workers=self.num_workers,
                          drop_last=len(self.train_rows) >= self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TextDataset(self.val_rows), batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=collate_text, num_workers=self.num_workers)

    def describe(self) -> str:
        where = self.task if self.source == "generated" else Path(self.path).name
        return f"{self.source}:{where} ({len(self.train_rows or [])} train / {len(self.val_rows or [])} held out)"


def _jsonl_row(row: dict[str, Any]) -> dict[str, str]:
    target = row.get("target", row["response"])
    return {"prompt": row["prompt"], "response": row["response"], "target": str(target)}
