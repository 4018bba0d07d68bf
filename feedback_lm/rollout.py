"""The shared rollout buffer: `Rollout` (one padded batch of episodes) and `RolloutBuffer` (rows of them).

Every online algorithm moves sampled episodes through these two types (see plugins/README.md):

- `Rollout` is a padded batch with named, shape-documented fields. Prompts are LEFT-padded (so a causal
  model's generation continues right after the last prompt token) and responses are RIGHT-padded and cut
  after the first EOS. Masks are bool, True = real token.
- A *row* is one episode with its padding stripped: a plain ``dict`` of 1-D tensors, 0-d tensors and
  Python values (see `Rollout.rows`). Rows are the unit of storage, so rollouts of different widths (HIR
  pools sampled at different lengths, self-correction chains) mix freely, and `Rollout.collate` re-pads
  a list of rows to the narrowest batch that fits them.
- `RolloutBuffer` stores rows. PPO clears it every iteration; HIR and self-correction keep it as a
  capped FIFO pool with optional de-duplication. It iterates seeded, reproducible minibatches and gives
  every DDP rank the same number of them, so no rank waits forever in a collective inside the step.

Shapes: ``B`` batch, ``P`` prompt length, ``R`` response length.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union

import torch
from torch import Tensor

Row = dict[str, Any]
Index = Union[Tensor, Sequence[int]]


@dataclass(eq=False)
class Rollout:
    """A batch of B sampled episodes. Shapes: B batch, P prompt len, R response len.

    Attributes:
        prompt_ids: ``[B, P]`` long, LEFT-padded.
        prompt_mask: ``[B, P]`` bool, True = real token (a suffix of each row).
        response_ids: ``[B, R]`` long, RIGHT-padded, cut after the first EOS.
        response_mask: ``[B, R]`` bool, True up to and including the first EOS (a prefix of each row).
        logprobs: ``[B, R]`` float, per-token log-probabilities under the policy that sampled (old policy).
        ref_logprobs: ``[B, R]`` float, per-token log-probabilities under the frozen reference.
        values: ``[B, R]`` float, per-token value estimates at sampling time.
        rewards: ``[B, R]`` float, per-token rewards (PPO: ``-β·kl`` plus the score on the last token).
        scores: ``[B]`` per-sample scalar (reward-model score, verifier result, correctness value).
        advantages: ``[B]`` per-sample advantage of sequence-level algorithms (RLOO, GRPO), detached.
        prompt: ``B`` prompt texts.
        response: ``B`` response texts.
        instruction: ``B`` instructions (HIR relabels these).
        feedback: ``B`` feedback items of any kind (str, float, dict).
        target: ``B`` gold answers, where the task has them.

    Masks given as int/float are converted to bool and ids to long. Padding positions of per-token
    fields carry no meaning; `collate` fills them with 0.0.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    logprobs: Optional[Tensor] = None
    ref_logprobs: Optional[Tensor] = None
    values: Optional[Tensor] = None
    rewards: Optional[Tensor] = None
    scores: Optional[Tensor] = None
    prompt: Optional[list[str]] = None
    response: Optional[list[str]] = None
    instruction: Optional[list[str]] = None
    feedback: Optional[list[Any]] = None
    target: Optional[list[str]] = None
    advantages: Optional[Tensor] = None

    #: Per-token float fields, ``[B, R]``, aligned with ``response_ids`` and padded on the right.
    TOKEN_FIELDS: ClassVar[tuple[str, ...]] = ("logprobs", "ref_logprobs", "values", "rewards")
    #: Per-sample tensor fields, ``[B]``.
    SAMPLE_FIELDS: ClassVar[tuple[str, ...]] = ("scores", "advantages")
    #: Per-sample Python lists, length ``B``.
    TEXT_FIELDS: ClassVar[tuple[str, ...]] = ("prompt", "response", "instruction", "feedback", "target")

    def __post_init__(self) -> None:
        self.prompt_ids = self.prompt_ids.long()
        self.response_ids = self.response_ids.long()
        self.prompt_mask = self.prompt_mask.bool()
        self.response_mask = self.response_mask.bool()
        self._check_shapes()
        self._check_padding_sides()

    def _check_shapes(self) -> None:
        if self.prompt_ids.dim() != 2 or self.response_ids.dim() != 2:
            raise ValueError(
                f"Rollout: prompt_ids and response_ids must be 2-D [B,P] / [B,R], got "
                f"prompt_ids {tuple(self.prompt_ids.shape)}, response_ids {tuple(self.response_ids.shape)}"
            )
        batch = self.prompt_ids.shape[0]
        if self.prompt_mask.shape != self.prompt_ids.shape:
            raise ValueError(
                f"Rollout: prompt_mask {tuple(self.prompt_mask.shape)} must have the shape of "
                f"prompt_ids {tuple(self.prompt_ids.shape)}"
            )
        if self.response_ids.shape[0] != batch:
            raise ValueError(
                f"Rollout: response_ids {tuple(self.response_ids.shape)} has a different batch size than "
                f"prompt_ids {tuple(self.prompt_ids.shape)}"
            )
        for name in ("response_mask", *self.TOKEN_FIELDS):
            value = getattr(self, name)
            if value is not None and value.shape != self.response_ids.shape:
                raise ValueError(
                    f"Rollout: {name} {tuple(value.shape)} must have the shape of "
                    f"response_ids {tuple(self.response_ids.shape)}"
                )
        for name in self.SAMPLE_FIELDS:
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (batch,):
                raise ValueError(f"Rollout: {name} {tuple(value.shape)} must have shape ({batch},)")
        for name in self.TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None and len(value) != batch:
                raise ValueError(f"Rollout: {name} has {len(value)} entries, expected B={batch}")

    def _check_padding_sides(self) -> None:
        # `rows()` strips padding by taking the last n prompt tokens and the first n response tokens, so a
        # mask with holes (or padded on the wrong side) would silently scramble episodes. Fail early.
        prompt_len = self.prompt_mask.sum(1, keepdim=True)
        if not torch.equal(self.prompt_mask, _left_mask(prompt_len, self.prompt_mask.shape[1])):
            raise ValueError("Rollout: prompt_mask must be LEFT-padded: each row is False... then True...")
        response_len = self.response_mask.sum(1, keepdim=True)
        if not torch.equal(self.response_mask, _right_mask(response_len, self.response_mask.shape[1])):
            raise ValueError("Rollout: response_mask must be RIGHT-padded: each row is True... then False...")

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def __eq__(self, other: object) -> bool:
        """Field-by-field equality: tensors must match in shape, dtype and values; lists must be equal."""
        if not isinstance(other, Rollout):
            return NotImplemented
        for field in dataclasses.fields(self):
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            if (mine is None) != (theirs is None):
                return False
            if isinstance(mine, Tensor):
                if mine.shape != theirs.shape or mine.dtype != theirs.dtype:
                    return False
                if not torch.equal(mine, theirs.to(mine.device)):
                    return False
            elif mine != theirs:
                return False
        return True

    __hash__ = None  # mutable container of tensors

    @property
    def device(self) -> torch.device:
        """The device of the token tensors."""
        return self.prompt_ids.device

    def to(self, device: Union[str, torch.device]) -> Rollout:
        """Returns a copy with every tensor on ``device`` (text lists are shared, not copied)."""
        moved = {
            field.name: value.to(device) if isinstance(value, Tensor) else value
            for field in dataclasses.fields(self)
            if (value := getattr(self, field.name)) is not None
        }
        return Rollout(**moved)

    def select(self, index: Index) -> Rollout:
        """Returns the rows at ``index`` as a new Rollout, text fields included.

        Args:
            index: row indices (a LongTensor ``[K]`` or a sequence of ints), or a bool mask ``[B]``.

        Returns:
            A Rollout of K rows with the same P and R (padding is not trimmed; use
            ``Rollout.collate(r.rows(), pad)`` for a minimally padded batch).
        """
        if isinstance(index, Tensor) and index.dtype == torch.bool:
            index = index.nonzero().flatten()
        index_list = index.tolist() if isinstance(index, Tensor) else list(index)
        picked: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Tensor):
                picked[field.name] = value[torch.as_tensor(index_list, dtype=torch.long, device=value.device)]
            elif value is not None:
                picked[field.name] = [value[i] for i in index_list]
        return Rollout(**picked)

    def rows(self) -> list[Row]:
        """Splits the batch into one dict per episode with the padding stripped.

        Each row has ``prompt_ids`` ``[p_i]`` (real tokens only), ``response_ids`` ``[r_i]`` (up to and
        including the first EOS), every present TOKEN_FIELD as ``[r_i]``, every present SAMPLE_FIELD as a
        0-d tensor and every present TEXT_FIELD as its Python value. Absent (None) fields are left out.
        Row tensors are views of compact copies of the real tokens, so they do not keep the padded batch
        alive; rows of one rollout share storage, so clone before mutating in place.
        """
        # Boolean indexing packs the real tokens row by row (row-major), so splitting the packed vector by
        # the per-row lengths gives each episode's tokens in order: two kernels per field, not B slices.
        prompt_lens = self.prompt_mask.sum(1).tolist()
        response_lens = self.response_mask.sum(1).tolist()
        columns: dict[str, Sequence[Any]] = {
            "prompt_ids": self.prompt_ids[self.prompt_mask].split(prompt_lens),
            "response_ids": self.response_ids[self.response_mask].split(response_lens),
        }
        for name in self.TOKEN_FIELDS:
            if (value := getattr(self, name)) is not None:
                columns[name] = value[self.response_mask].split(response_lens)
        for name in self.SAMPLE_FIELDS:
            if (value := getattr(self, name)) is not None:
                columns[name] = value.unbind(0)
        for name in self.TEXT_FIELDS:
            if (value := getattr(self, name)) is not None:
                columns[name] = value
        return [{name: column[i] for name, column in columns.items()} for i in range(len(self))]

    @classmethod
    def collate(cls, rows: Sequence[Row], pad_token_id: int, widths: tuple[int, int] = (0, 0)) -> Rollout:
        """Pads a list of rows (as made by `rows`) back into a minimally padded Rollout.

        Prompts are left-padded and responses right-padded with ``pad_token_id``; per-token float fields
        are right-padded with 0.0. ``P`` and ``R`` are the longest prompt and response among ``rows``, or
        ``widths`` when those are larger. The batch lives on the device of the first row.

        Args:
            rows: B >= 1 row dicts, all with the same keys.
            pad_token_id: id written into padding positions of ``prompt_ids`` and ``response_ids``.
            widths: smallest ``(P, R)`` to pad to (see ``RolloutBuffer.minibatches(same_layout=True)``).

        Raises:
            ValueError: no rows, rows with different keys, unknown keys, or a per-token field whose
                length differs from its row's response.
        """
        if not rows:
            raise ValueError("Rollout.collate: need at least one row")
        keys = set(rows[0])
        known = {"prompt_ids", "response_ids", *cls.TOKEN_FIELDS, *cls.SAMPLE_FIELDS, *cls.TEXT_FIELDS}
        if not {"prompt_ids", "response_ids"} <= keys or not keys <= known:
            raise ValueError(
                f"Rollout.collate: a row needs prompt_ids and response_ids and only fields of Rollout; "
                f"got keys {sorted(keys)}"
            )
        for i, row in enumerate(rows):
            if set(row) != keys:
                raise ValueError(
                    f"Rollout.collate: row {i} has keys {sorted(row)} but row 0 has {sorted(keys)}"
                )
        device = rows[0]["prompt_ids"].device
        prompt_lens = torch.tensor([len(r["prompt_ids"]) for r in rows], device=device).unsqueeze(1)
        response_lens = torch.tensor([len(r["response_ids"]) for r in rows], device=device).unsqueeze(1)
        # at least one (padding) prompt column: a causal forward reads the position before the response
        prompt_mask = _left_mask(prompt_lens, max(1, widths[0], int(prompt_lens.max())))
        response_mask = _right_mask(response_lens, max(widths[1], int(response_lens.max())))

        fields: dict[str, Any] = {
            "prompt_ids": _scatter_padded([r["prompt_ids"] for r in rows], prompt_mask, pad_token_id),
            "prompt_mask": prompt_mask,
            "response_ids": _scatter_padded([r["response_ids"] for r in rows], response_mask, pad_token_id),
            "response_mask": response_mask,
        }
        for name in cls.TOKEN_FIELDS:
            if name in keys:
                for i, row in enumerate(rows):
                    if len(row[name]) != len(row["response_ids"]):
                        raise ValueError(
                            f"Rollout.collate: row {i} has {len(row[name])} {name} for "
                            f"{len(row['response_ids'])} response tokens"
                        )
                fields[name] = _scatter_padded([r[name] for r in rows], response_mask, 0.0)
        for name in cls.SAMPLE_FIELDS:
            if name in keys:
                fields[name] = torch.stack([torch.as_tensor(r[name], device=device) for r in rows])
        for name in cls.TEXT_FIELDS:
            if name in keys:
                fields[name] = [r[name] for r in rows]
        return cls(**fields)

    @classmethod
    def cat(cls, rollouts: Sequence[Rollout], pad_token_id: int) -> Rollout:
        """Concatenates rollouts of possibly different widths along the batch, re-padding minimally."""
        return cls.collate([row for rollout in rollouts for row in rollout.rows()], pad_token_id)


def _left_mask(lengths: Tensor, width: int) -> Tensor:
    """``[B, width]`` bool, True in the last ``lengths[b]`` positions. ``lengths``: ``[B, 1]``."""
    return torch.arange(width, device=lengths.device) >= width - lengths


def _right_mask(lengths: Tensor, width: int) -> Tensor:
    """``[B, width]`` bool, True in the first ``lengths[b]`` positions. ``lengths``: ``[B, 1]``."""
    return torch.arange(width, device=lengths.device) < lengths


def _scatter_padded(pieces: list[Tensor], mask: Tensor, pad_value: float) -> Tensor:
    """Writes 1-D ``pieces`` (one per row, in order) into the True positions of ``mask`` ``[B, W]``.

    Boolean-index assignment fills True positions in row-major order, which is exactly the order of the
    concatenated pieces, so one write pads the whole batch on whichever side ``mask`` leaves free.
    """
    packed = torch.cat([piece.to(mask.device) for piece in pieces])
    out = torch.full(mask.shape, pad_value, dtype=packed.dtype, device=mask.device)
    out[mask] = packed
    return out


def _dist_min(n: int) -> int:
    """The minimum of ``n`` over all ranks; ``n`` itself when torch.distributed is not initialized.

    Every rank must call this (it is a collective). The tensor goes to the device the backend
    communicates on: NCCL only reduces CUDA tensors, gloo (and the CPU half of mixed backends) CPU ones.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return n
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    count = torch.tensor(n, dtype=torch.long, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MIN)
    return int(count.item())


class RolloutBuffer:
    """Stores episodes as rows and serves them back as padded minibatches.

    Two ways to use it:

    - **Per iteration** (PPO): ``add`` this iteration's rollout, iterate ``minibatches``, ``clear``.
    - **Pool** (HIR, self-correction): give ``capacity`` and keep adding. When the buffer holds more than
      ``capacity`` rows, the OLDEST rows are evicted first (FIFO), so the pool tracks recent policies.
      With ``dedupe_key``, a row whose key is already in the buffer is skipped (e.g. identical outputs
      for the same prompt), which also applies among the rows of a single ``add``.

    Example:
        >>> buf = RolloutBuffer(capacity=4096, pad_token_id=tok.pad_token_id,
        ...                     dedupe_key=lambda row: (row["prompt"], row["response"]))
        >>> buf.add(rollout)
        >>> for mb in buf.minibatches(batch_size=64, epochs=4):
        ...     loss = ...

    Args:
        capacity: maximum number of rows kept (FIFO eviction); None = unbounded.
        pad_token_id: id used to pad ``prompt_ids`` / ``response_ids`` when collating.
        seed: seed of the buffer's own generator, which drives shuffling and ``sample``.
        dedupe_key: optional ``callable(row) -> hashable``; rows whose key is present are not added.
    """

    def __init__(
        self,
        capacity: Optional[int] = None,
        pad_token_id: int = 0,
        seed: int = 0,
        dedupe_key: Optional[Callable[[Row], Hashable]] = None,
    ) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"RolloutBuffer: capacity must be >= 1 or None, got {capacity}")
        self.capacity = capacity
        self.pad_token_id = pad_token_id
        self.dedupe_key = dedupe_key
        # A private generator: shuffling is reproducible from `seed` alone and does not disturb (or get
        # disturbed by) the global RNG that sampling and dropout use.
        self._generator = torch.Generator().manual_seed(seed)
        self._rows: list[Row] = []
        self._keys: set[Hashable] = set()

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def rows(self) -> tuple[Row, ...]:
        """The stored rows, oldest first, as a read-only tuple (see `Rollout.rows` for the format)."""
        return tuple(self._rows)

    def add(self, rollout: Union[Rollout, Iterable[Row]]) -> int:
        """Adds a rollout (or rows already split) and evicts the oldest rows beyond ``capacity``.

        Returns:
            The number of rows added (fewer than given when ``dedupe_key`` skipped some).
        """
        rows = rollout.rows() if isinstance(rollout, Rollout) else rollout
        added = 0
        for row in rows:
            if self.dedupe_key is not None:
                key = self.dedupe_key(row)
                if key in self._keys:
                    continue
                self._keys.add(key)
            self._rows.append(row)
            added += 1
        self._evict()
        return added

    def _evict(self) -> None:
        if self.capacity is None or len(self._rows) <= self.capacity:
            return
        overflow = len(self._rows) - self.capacity
        if self.dedupe_key is not None:
            # Keys are unique within the buffer, so an evicted row's key can be forgotten: the same
            # episode may be admitted again later, which is what a sliding pool wants.
            for row in self._rows[:overflow]:
                self._keys.discard(self.dedupe_key(row))
        del self._rows[:overflow]

    def clear(self) -> None:
        """Drops every row (the generator keeps its state, so later shuffles stay reproducible)."""
        self._rows.clear()
        self._keys.clear()

    def num_minibatches(self, batch_size: int, drop_last: bool = False) -> int:
        """Minibatches per epoch on THIS rank (no collective): ``floor`` with ``drop_last``, else ``ceil``."""
        if batch_size < 1:
            raise ValueError(f"RolloutBuffer: batch_size must be >= 1, got {batch_size}")
        if drop_last:
            return len(self._rows) // batch_size
        return math.ceil(len(self._rows) / batch_size)

    def minibatches(
        self,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        epochs: int = 1,
        sync_ranks: bool = True,
        same_layout: bool = False,
    ) -> Iterator[Rollout]:
        """Iterates collated minibatches, ``epochs`` passes over the buffer.

        Each epoch draws a fresh permutation from the buffer's generator (or keeps insertion order when
        ``shuffle=False``). Without ``drop_last`` the last minibatch of an epoch may be smaller.

        With ``sync_ranks`` and an initialized process group, the number of minibatches per epoch is the
        minimum over ranks, and longer ranks drop their extra minibatches: every optimizer step in DDP
        all-reduces gradients, so ranks that stepped a different number of times would hang. The
        collective runs when this method is called (not lazily on first ``next``), so every rank must
        call it, even with an empty buffer.

        Args:
            batch_size: rows per minibatch.
            shuffle: draw a new random order each epoch.
            drop_last: drop each epoch's final partial minibatch.
            epochs: number of passes.
            sync_ranks: equalise the minibatch count across DDP ranks.
            same_layout: pad every minibatch to the longest prompt and response in the buffer instead of
                minimally. A rollout's own forward pass saw that layout, and under bf16 autocast a row's
                log-probs depend on the padding around it (other matrix shapes round differently: up to
                0.03 nats measured on the tiny presets), while with the same layout and the same number of
                rows they are bit-identical whatever the other rows are. PPO needs this (and runs its
                rollout's forward pass in chunks of the minibatch size) for its ratio to start at exactly 1.

        Returns:
            An iterator of Rollouts of at most ``batch_size`` rows.
        """
        per_epoch = self.num_minibatches(batch_size, drop_last)
        if sync_ranks:
            per_epoch = _dist_min(per_epoch)
        # Snapshot: rows added while iterating belong to the next call, not this one.
        rows = list(self._rows)
        widths = (0, 0)
        if same_layout and rows:
            widths = (max(len(r["prompt_ids"]) for r in rows), max(len(r["response_ids"]) for r in rows))
        return self._iterate(rows, batch_size, shuffle, epochs, per_epoch, widths)

    def _iterate(
        self, rows: list[Row], batch_size: int, shuffle: bool, epochs: int, per_epoch: int,
        widths: tuple[int, int],
    ) -> Iterator[Rollout]:
        for _ in range(epochs):
            if shuffle:
                order = torch.randperm(len(rows), generator=self._generator)
            else:
                order = torch.arange(len(rows))
            for start in range(0, per_epoch * batch_size, batch_size):
                chunk = order[start : start + batch_size].tolist()
                yield Rollout.collate([rows[i] for i in chunk], self.pad_token_id, widths)

    def sample(self, n: int) -> Rollout:
        """``min(n, len)`` random rows without replacement, collated.

        Raises:
            ValueError: the buffer is empty or ``n < 1``.
        """
        if n < 1 or not self._rows:
            raise ValueError(
                f"RolloutBuffer.sample: need n >= 1 and a non-empty buffer (n={n}, len={len(self)})"
            )
        picked = torch.randperm(len(self._rows), generator=self._generator)[:n].tolist()
        return Rollout.collate([self._rows[i] for i in picked], self.pad_token_id)

    def state_dict(self) -> dict[str, Any]:
        """Rows and generator state, made of tensors, lists, dicts and Python scalars (``weights_only``-safe).

        Row tensors are cloned so that each is saved compactly, not with the storage it shares with rows
        evicted earlier.
        """
        rows = [{k: v.clone() if isinstance(v, Tensor) else v for k, v in row.items()} for row in self._rows]
        return {"rows": rows, "generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores rows and generator state. ``capacity`` and ``dedupe_key`` of THIS buffer apply."""
        self.clear()
        self.add(state["rows"])
        self._generator.set_state(state["generator"])
