"""Datamodules by data shape. Batches are *text* (lists of strings); the policy tokenizes them, so the
data side knows nothing about causal vs encoder-decoder models or tokenizers.

``TaskDataModule`` serves prompt/response/target examples from one of three sources:

* ``generated``: a task generator in BIG-Bench Hard format (``feedback_lm.data.tasks``), made on the
  fly from a seed; this is what the embedded default uses and needs no files;
* ``bbh``: a real BBH task JSON (seeded 80/20 split, docs/algorithms.md §5.1); the held-out 20% is the val set;
* ``jsonl``: ``{"prompt", "response"}`` rows (``target`` optional, defaults to the response).

A batch is ``{"prompt": [str], "response": [str], "target": [str]}``.

Rows a datamodule leaves out (a file longer than ``num_train``, a held-out set capped at ``num_val``,
skipped comparisons) are counted in ``data_report`` (``data/<name>`` keys that ``run.py`` adds to
``metrics.json``) and said on the console, never dropped in silence.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from feedback_lm.checks import check_args
from feedback_lm.data import files, tasks
from feedback_lm.errors import UserError

SOURCES = ("generated", "bbh", "jsonl")

log = logging.getLogger(__name__)


class TextDataset(Dataset):
    """A list of row dicts with string fields."""

    def __init__(self, rows: Sequence[dict[str, str]]):
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, str]:
        return self.rows[i]


class ResumableSampler(Sampler[int]):
    """A seeded shuffle that a checkpoint can resume mid-epoch, optionally grouped by length.

    Epoch ``e`` visits ``randperm(n)`` drawn from its own generator seeded with ``seed + e``, so the order
    does not depend on the global random state; ``start`` skips the first indices of the epoch in
    progress (the samples a resumed run has already trained on).

    With ``lengths`` (one per row) the epoch's order is grouped by length (as Hugging Face's
    ``group_by_length``): the shuffled rows are cut into groups of ``group`` batches, each group is sorted
    by length so every batch holds rows of similar length, and the batches of the epoch are shuffled. Each
    row is still seen once per epoch; a batch pads far less (generated ``word_sorting`` at BBH length: 62 % of a random
    batch's positions are real tokens, 99 % of a grouped one's).
    """

    def __init__(self, n: int, seed: int, epoch: int = 0, start: int = 0, lengths: Sequence[int] | None = None,
                 batch_size: int = 1, group: int = 50):
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start
        self.lengths = None if lengths is None else torch.as_tensor(lengths)
        self.batch_size, self.group = batch_size, group

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g)
        if self.lengths is not None:
            order = grouped_by_length(order, self.lengths, self.batch_size, self.group, g)
        start, self.start = self.start, 0
        self.epoch += 1
        yield from order.tolist()[start:]


def grouped_by_length(order: torch.Tensor, lengths: torch.Tensor, batch_size: int, group: int,
                      generator: torch.Generator) -> torch.Tensor:
    """``order`` rearranged so that each run of ``batch_size`` indices has similar ``lengths``: groups of
    ``group * batch_size`` consecutive indices sorted by length (longest first), then the full batches
    shuffled; a last partial batch stays last (``drop_last`` drops it)."""
    span = batch_size * group
    parts = [chunk[torch.argsort(lengths[chunk], descending=True, stable=True)] for chunk in order.split(span)]
    flat = torch.cat(parts)
    n_full = len(flat) // batch_size
    batches = flat[: n_full * batch_size].view(n_full, batch_size)
    shuffled = batches[torch.randperm(n_full, generator=generator)].reshape(-1)
    return torch.cat([shuffled, flat[n_full * batch_size:]])


class ResumableData:
    """Mixin for the datamodules: a training loader whose position in the epoch is checkpointed.

    Lightning saves :meth:`state_dict` in each checkpoint and calls :meth:`load_state_dict` before it
    builds the loaders of a resumed run, which then continues the interrupted epoch where it stopped
    instead of starting it over (one process; under multi-process DDP the resumed epoch starts over).
    """

    _sampler: ResumableSampler | None = None
    _resume: dict[str, int] | None = None
    _batches_seen: tuple[int, int] = (0, 0)  # (epoch, batches of it handed to the model)

    def _train_loader(self, rows: list, collate, lengths: Sequence[int] | None = None) -> DataLoader:
        state = self._resume or {}
        skip = state.get("batches", 0) * self.batch_size
        if self.trainer is not None and self.trainer.world_size > 1:
            skip = 0
        self._sampler = ResumableSampler(len(rows), self.seed, epoch=state.get("epoch", 0), start=skip,
                                         lengths=lengths, batch_size=self.batch_size)
        self._batches_seen = (state.get("epoch", 0), state.get("batches", 0))
        # Full batches only (every DDP rank then sees the same batch shapes), unless the data is smaller
        # than one batch.
        return DataLoader(TextDataset(rows), batch_size=self.batch_size, sampler=self._sampler, collate_fn=collate,
                          num_workers=self.num_workers, drop_last=len(rows) >= self.batch_size)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training and self._sampler is not None:
            epoch, seen = self._batches_seen
            current = self._sampler.epoch - 1  # the epoch the sampler is serving
            self._batches_seen = (current, seen + 1 if current == epoch else 1)
        return batch

    def state_dict(self) -> dict[str, int]:
        epoch, seen = self._batches_seen
        return {"epoch": epoch, "batches": seen}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = dict(state_dict)


def collate_text(rows: list[dict[str, str]]) -> dict[str, list[str]]:
    """Rows -> a dict of lists (one list per field)."""
    return {key: [r[key] for r in rows] for key in rows[0]}


def example_rows(examples: Sequence[tasks.Example], template: str) -> list[dict[str, str]]:
    """BBH examples -> rows with the prompt template applied and the answer as the response."""
    return [{"prompt": tasks.format_prompt(e, template), "response": tasks.format_response(e), "target": e.target}
            for e in examples]


class TaskDataModule(ResumableData, L.LightningDataModule):
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
        split_seed: the permutation seed of the BBH 80/20 split. Fixed (1, as in the HIR reference code)
            rather than the run's seed, so runs with different seeds are evaluated on the same examples.
        num_workers: DataLoader workers.
        group_by_length: training batches of rows of similar length (prompt + response characters; see
            :class:`ResumableSampler`), so a batch pads less. Off by default: it makes a step cheaper where
            lengths vary (1.9x on BBH-length word_sorting) but it also makes each batch less varied, and on
            the embedded default it slowed learning (docs/speed.md, "Length-grouped batches").
    """

    DATA_KIND: ClassVar[str] = "tasks"

    def __init__(self, source: str = "generated", task: str = "word_sorting",
                 difficulty: dict[str, Any] | None = None, path: str | None = None,
                 val_path: str | None = None, num_train: int = 10000, num_val: int = 200,
                 template: str = "Q: {input}\nA:", batch_size: int = 32, eval_batch_size: int = 100,
                 val_fraction: float = 0.1, seed: int = 0, split_seed: int = 1, num_workers: int = 0,
                 group_by_length: bool = False):
        super().__init__()
        check_args("data", num_train=(num_train, ">= 1"), num_val=(num_val, ">= 0"), batch_size=(batch_size, ">= 1"),
                   eval_batch_size=(eval_batch_size, ">= 1"), val_fraction=(val_fraction, "[0, 1)"),
                   num_workers=(num_workers, ">= 0"))
        check_template(template)
        if source not in SOURCES:
            raise UserError(f"unknown data.source '{source}'; choose one of {list(SOURCES)}")
        if source != "generated" and not path:
            raise UserError(f"data.source={source} needs a file: set data.path=/path/to/file")
        self.source, self.task, self.difficulty = source, task, dict(difficulty or {})
        self.path, self.val_path = path, val_path
        self.num_train, self.num_val, self.template = num_train, num_val, template
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_fraction, self.seed, self.split_seed, self.num_workers = val_fraction, seed, split_seed, num_workers
        self.group_by_length = group_by_length
        self.train_rows: list[dict[str, str]] | None = None
        self.val_rows: list[dict[str, str]] | None = None
        self.data_report: dict[str, int] = {}

    # ------------------------------------------------------------------------------------ loading
    def setup(self, stage: str | None = None) -> None:
        if self.train_rows is not None:
            return
        if self.source == "generated":
            train, val = generated_split(self.task, self.num_train, self.num_val, self.seed, self.difficulty)
            self.train_rows, self.val_rows = example_rows(train, self.template), example_rows(val, self.template)
        elif self.source == "bbh":
            self.train_rows = example_rows(files.load_bbh(self.path, split="train", seed=self.split_seed),
                                           self.template)
            self.val_rows = self._cap_val(example_rows(files.load_bbh(self.path, split="test", seed=self.split_seed),
                                                       self.template))
        else:
            rows = [_jsonl_row(r) for r in files.load_jsonl(self.path, optional=("target",))]
            if self.val_path:
                val = [_jsonl_row(r) for r in files.load_jsonl(self.val_path, optional=("target",))]
            else:
                n_val = max(1, int(len(rows) * self.val_fraction)) if len(rows) > 1 else 0
                rows, val = rows[n_val:], rows[:n_val]
            self.train_rows, self.val_rows = rows, self._cap_val(val)
        if not self.train_rows:
            raise UserError(f"no training examples from data.source={self.source} (path={self.path})")
        self.data_report.update({"data/train_rows": len(self.train_rows), "data/val_rows": len(self.val_rows)})

    def _cap_val(self, val: list) -> list:
        return _capped(val, self.num_val, "data.num_val", "held-out", self.data_report, "data/val_rows_capped")

    def train_dataloader(self) -> DataLoader:
        lengths = ([len(r["prompt"]) + len(r.get("response", "")) for r in self.train_rows]
                   if self.group_by_length else None)
        return self._train_loader(self.train_rows, collate_text, lengths)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TextDataset(self.val_rows), batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=collate_text, num_workers=self.num_workers)

    def describe(self) -> str:
        where = self.task if self.source == "generated" else Path(self.path).name
        return f"{self.source}:{where} ({len(self.train_rows or [])} train / {len(self.val_rows or [])} held out)"


def _capped(rows: list, cap: int, option: str, what: str, report: dict[str, int], key: str) -> list:
    """``rows[:cap]``, counting (and saying) how many rows the cap leaves out."""
    dropped = max(0, len(rows) - cap)
    report[key] = dropped
    if dropped:
        _say(f"{option}={cap}: using {cap} of {len(rows)} {what} rows ({dropped} left out; raise {option} to use them)")
    return rows[:cap]


def _say(message: str) -> None:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        log.warning(message)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def check_template(template: str) -> None:
    """A prompt template must place the question somewhere: refuse one without ``{input}``."""
    if not isinstance(template, str) or "{input}" not in template:
        raise UserError(f"data.template={template!r} has no {{input}} placeholder, so every prompt would be the "
                        f"same text; e.g. data.template='Q: {{input}}\\nA:'")


def generated_split(task: str, num_train: int, num_val: int, seed: int,
                    difficulty: dict[str, Any] | None = None) -> tuple[list[tasks.Example], list[tasks.Example]]:
    """Disjoint train and held-out examples of a generated task.

    The held-out set is drawn FIRST (its own seed stream, distinct inputs), then training examples are drawn
    from the training stream skipping every held-out input. Drawing train first and de-duplicating the
    held-out draw against it would bias the held-out set towards the large part of the task's space: on
    the default word_sorting (2-3 of 30 words) all 870 two-word lists occur among 20,000 training examples,
    so such a held-out set would hold only three-word lists. This way it keeps the task's natural mix.
    """
    difficulty = dict(difficulty or {})
    val: dict[str, tasks.Example] = {}
    for e in tasks.generate(task, 10 * num_val + 20, seed=seed + 10_007, **difficulty):
        if len(val) == num_val:
            break
        val.setdefault(e.input, e)
    held = set(val)
    train: list[tasks.Example] = []
    n = num_train
    while len(train) < num_train:  # the stream is prefix-stable: a longer draw starts with the shorter one
        train = [e for e in tasks.generate(task, n, seed=seed, **difficulty) if e.input not in held][:num_train]
        if n >= 4 * num_train + 100:
            break  # a task this small is mostly held out: train on what is left
        n = 2 * n + 10
    return train, list(val.values())


def _jsonl_row(row: dict[str, Any]) -> dict[str, str]:
    target = row.get("target", row["response"])
    return {"prompt": row["prompt"], "response": row["response"], "target": str(target)}


# ------------------------------------------------------------------------------------- comparisons
COMPARISON_SOURCES = ("generated", "jsonl", "hh_rlhf")


def corrupt_answer(task: str, example: tasks.Example, rng) -> str:
    """A plausible wrong answer to ``example``: another option letter, a nearby number, or the words
    in another order (or one word dropped). Used to make graded comparisons without any model."""
    target = example.target
    letters = re.findall(r"^\(([A-Z])\)", example.input, flags=re.MULTILINE)
    if re.fullmatch(r"\([A-Z]\)", target) and len(letters) > 1:
        return "(" + rng.choice([x for x in letters if f"({x})" != target]) + ")"
    if target.isdigit():
        return str(max(0, int(target) + rng.choice([-3, -2, -1, 1, 2, 3])))
    words = target.split()
    if len(words) > 1 and rng.random() < 0.8:
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        return " ".join(shuffled)
    if len(words) > 1:
        drop = rng.randrange(len(words))
        return " ".join(w for i, w in enumerate(words) if i != drop)
    return target[::-1] + "x"


def generated_comparisons(task: str, n: int, k: int, seed: int, template: str,
                          difficulty: dict[str, Any] | None = None) -> list:
    """``n`` comparisons of the gold answer and ``k-1`` corruptions, ranked by the task's graded score
    (ties grouped), so a reward model can be trained and checked with no labels and no model."""
    import random

    from feedback_lm.data.comparisons import Comparison

    rng = random.Random(seed)
    out = []
    for e in tasks.generate(task, n, seed=seed, **(difficulty or {})):
        answers = [e.target] + [corrupt_answer(task, e, rng) for _ in range(k - 1)]
        answers = list(dict.fromkeys(answers))  # distinct responses only
        if len(answers) < 2:
            continue
        rng.shuffle(answers)
        scores = [tasks.score(task, a, e.target) for a in answers]
        levels = sorted(set(scores), reverse=True)
        tiers = [[i for i, s in enumerate(scores) if s == level] for level in levels]
        if len(tiers) < 2:
            continue
        out.append(Comparison(prompt=tasks.format_prompt(e, template), responses=[" " + a for a in answers],
                              tiers=tiers, meta={"target": e.target, "scores": scores}))
    return out


class ComparisonDataModule(ResumableData, L.LightningDataModule):
    """Comparisons for reward models: each batch is a list of :class:`Comparison` (one prompt with all
    its K responses and their ranking).

    Args:
        source: ``generated`` (gold answer vs corruptions of a generated task, ranked by the verifier),
            ``jsonl`` (comparison JSONL: best-of-K, rankings with ties, or chosen/rejected), ``hh_rlhf``
            (Anthropic HH-RLHF jsonl[.gz]).
        task, difficulty, template: the generated task (also gives ``demos`` for InstructGPT's bias).
        path: the JSONL / HH-RLHF file. val_path: a separate held-out file (else ``val_fraction``).
        num_train, num_val: generated comparisons (caps for files: ``num_train`` <= 0 means all).
        k: responses per generated comparison.
        batch_size: prompts per batch (InstructGPT counts prompts, not pairs).
        skip_degenerate: skip (and count) file rows that rank identical responses apart instead of
            refusing the file.
    """

    DATA_KIND: ClassVar[str] = "comparisons"

    def __init__(self, source: str = "generated", task: str = "word_sorting",
                 difficulty: dict[str, Any] | None = None, template: str = "Q: {input}\nA:",
                 path: str | None = None, val_path: str | None = None, num_train: int = 4000,
                 num_val: int = 200, k: int = 4, batch_size: int = 32, eval_batch_size: int = 64,
                 val_fraction: float = 0.2, seed: int = 0, num_workers: int = 0, skip_degenerate: bool = False):
        super().__init__()
        check_args("data", num_val=(num_val, ">= 0"), k=(k, ">= 2"), batch_size=(batch_size, ">= 1"),
                   eval_batch_size=(eval_batch_size, ">= 1"), val_fraction=(val_fraction, "[0, 1)"),
                   num_workers=(num_workers, ">= 0"))
        check_template(template)
        if source not in COMPARISON_SOURCES:
            raise UserError(f"unknown data.source '{source}' for comparisons; choose one of {list(COMPARISON_SOURCES)}")
        if source != "generated" and not path:
            raise UserError(f"data.source={source} needs a file: set data.path=/path/to/file")
        self.source, self.task, self.difficulty, self.template = source, task, dict(difficulty or {}), template
        self.path, self.val_path, self.num_train, self.num_val, self.k = path, val_path, num_train, num_val, k
        self.batch_size, self.eval_batch_size, self.val_fraction = batch_size, eval_batch_size, val_fraction
        self.seed, self.num_workers, self.skip_degenerate = seed, num_workers, skip_degenerate
        self.train_rows: list | None = None
        self.val_rows: list | None = None
        self.data_report: dict[str, int] = {}
        self.demos: list[tuple[str, str]] = []

    @property
    def prompts(self) -> list[str]:
        """Training prompts (the query distribution for Ziegler's normalisation samples)."""
        return [c.prompt for c in self.train_rows or []]

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows is not None:
            return
        from feedback_lm.data import comparisons

        if self.source == "generated":
            train = generated_comparisons(self.task, self.num_train, self.k, self.seed, self.template, self.difficulty)
            seen = {c.prompt for c in train}
            val = [c for c in generated_comparisons(self.task, 4 * self.num_val + 20, self.k, self.seed + 10_007,
                                                    self.template, self.difficulty) if c.prompt not in seen]
            self.demos = [(c.prompt, " " + c.meta["target"]) for c in train]
        else:
            skipped: dict[str, int] = {}
            if self.source == "jsonl":
                def load(path):
                    return comparisons.load_comparisons(path, self.skip_degenerate, skipped)
            else:
                def load(path):
                    return comparisons.load_hh_rlhf(path, skipped=skipped)
            rows = load(self.path)
            if self.val_path:
                train, val = rows, load(self.val_path)
            else:
                train, val = comparisons.split_comparisons(rows, self.val_fraction, self.seed)
            self.data_report.update({f"data/skipped_{_slug(why)}": n for why, n in skipped.items()})
            if self.num_train > 0:
                train = _capped(train, self.num_train, "data.num_train", "training", self.data_report,
                                "data/train_rows_capped")
        self.train_rows = train
        self.val_rows = _capped(val, self.num_val, "data.num_val", "held-out", self.data_report, "data/val_rows_capped")
        if not self.train_rows:
            raise UserError(f"no training comparisons from data.source={self.source} (path={self.path})")
        self.data_report.update({"data/train_rows": len(self.train_rows), "data/val_rows": len(self.val_rows)})

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self.train_rows, list)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TextDataset(self.val_rows), batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=list, num_workers=self.num_workers)
