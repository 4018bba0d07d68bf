"""Reading and writing task data files: BBH JSON and JSONL rows, with errors a user can act on.

- :func:`load_bbh` reads a BIG-Bench Hard task file and returns the docs/algorithms.md §5.1 split.
- :func:`load_jsonl` reads rows such as ``{"prompt": ..., "response": ...}`` and names the file and
  line of the first bad row.
- :func:`read_text_lines` decodes a text file line by line and names the file and line of the first byte
  that is not UTF-8 text (a binary file, a Latin-1 export); :func:`load_text` reads a whole text file.
- :func:`write_jsonl` writes rows atomically, so an interrupted run never leaves half a file that a
  resumed run would then read as complete.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from feedback_lm.data.tasks import Example
from feedback_lm.errors import UserError

__all__ = ["bbh_split_indices", "check_output_file", "load_bbh", "load_jsonl", "load_text", "read_text_lines", "write_jsonl"]

_BBH_SHAPE = '{"examples": [{"input": "...", "target": "..."}, ...]}'


def bbh_split_indices(n: int, seed: int = 1, test_frac: float = 0.2) -> tuple[list[int], list[int]]:
    """Spec §5.1 split of ``n`` examples: (train pool indices, test indices).

    The reference code calls ``np.random.seed(1)`` and permutes; ``RandomState(seed).permutation``
    gives the same permutation without touching numpy's global state. The first
    ``int(n * (1 - test_frac))`` permuted indices are the sampling/training pool, the rest the
    evaluation set (250 examples -> 200 / 50).
    """
    if not 0.0 <= test_frac <= 1.0:
        raise UserError(f"test_frac must be in [0, 1], got {test_frac!r}")
    perm = np.random.RandomState(seed).permutation(n).tolist()
    # round() first so that e.g. 250 * (1 - 0.2) = 199.99999... cannot lose an example to float error.
    n_train = int(round(n * (1.0 - test_frac), 6))
    return perm[:n_train], perm[n_train:]


def load_bbh(
    path: str | os.PathLike, split: str = "all", seed: int = 1, test_frac: float = 0.2
) -> list[Example]:
    """Load a BBH task file (``{"canary", "examples": [{"input", "target"}]}``).

    BBH inputs already hold the options in the docs/algorithms.md §5.1 layout (``"...\\nOptions:\\n(A) ..."``) and no
    ``"\\n\\n"``, so they are used as they are.

    Args:
        path: the task's ``.json`` file, e.g. ``.../bbh/word_sorting.json``.
        split: ``"all"`` (file order), ``"train"`` (the sampling/training pool) or ``"test"``
            (the held-out evaluation set), see :func:`bbh_split_indices`.
        seed: the split's permutation seed (spec: 1).
        test_frac: the share held out for evaluation (spec: 0.2).

    Returns:
        The examples of the split, in permuted order for ``train``/``test``.

    Raises:
        UserError: the file is missing, is not JSON, or does not have the BBH shape; or ``split`` is
            not one of the three names.
    """
    if split not in ("all", "train", "test"):
        raise UserError(f"split must be 'all', 'train' or 'test', got {split!r}")
    p = Path(path)
    if not p.is_file():
        raise UserError(
            f"BBH file not found: {p}. Point the data config at a BIG-Bench Hard task file, e.g. "
            f"data.path=/path/to/bbh/word_sorting.json (files from github.com/suzgunmirac/BIG-Bench-Hard)."
        )
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(
            f"{p} is not a BBH task file: it is not valid JSON ({err}); expected {_BBH_SHAPE}"
        ) from None
    rows = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise UserError(
            f"{p} is not a BBH task file: it has no non-empty 'examples' list; expected {_BBH_SHAPE}"
        )
    examples = []
    for i, row in enumerate(rows):
        if not (isinstance(row, dict) and all(isinstance(row.get(k), str) and row[k].strip()
                                              for k in ("input", "target"))):
            raise UserError(
                f"{p}: examples[{i}] is not an object with non-empty string 'input' and 'target' "
                f"(got {_preview(row)}); expected {_BBH_SHAPE}"
            )
        examples.append(Example(input=row["input"], target=row["target"]))
    if split == "all":
        return examples
    train, test = bbh_split_indices(len(examples), seed=seed, test_frac=test_frac)
    return [examples[i] for i in (train if split == "train" else test)]


def load_jsonl(path: str | os.PathLike, required: Sequence[str] = ("prompt", "response"),
               optional: Sequence[str] = ()) -> list[dict]:
    """Read a JSONL file of objects that each have non-empty string fields ``required``.

    Blank lines are skipped; other fields are kept as they are.

    Args:
        path: the ``.jsonl`` file.
        required: field names every row must have, with non-empty string values.
        optional: field names that may be missing, but when present hold a non-empty string.

    Returns:
        The rows, in file order.

    Raises:
        UserError: the file is missing, is not UTF-8 text or holds no rows, or a row is malformed; the
            message gives ``path:LINE``, what is wrong, and the expected row shape.
    """
    p = Path(path)
    shape = "{" + ", ".join(f'"{k}": "..."' for k in required) + "}"
    rows = []
    for where, _, row in read_jsonl(p, "JSONL", shape):
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object like {shape}, got {_preview(row)}")
        for key in (*required, *optional):
            if key not in row:
                if key in optional:
                    continue
                raise UserError(
                    f"{where}: missing field {key!r}; each line must be an object like {shape}"
                )
            if not isinstance(row[key], str) or not row[key].strip():
                got = "an empty string" if isinstance(row[key], str) else _preview(row[key])
                raise UserError(
                    f"{where}: field {key!r} must be a non-empty string, got {got}; "
                    f"each line must be an object like {shape}"
                )
        rows.append(row)
    if not rows:
        raise UserError(f"{p} has no rows; each line must be an object like {shape}")
    return rows


def read_jsonl(path: str | os.PathLike, what: str, shape: str = "JSON object") -> Iterator[tuple[str, int, object]]:
    """``("path:LINE", LINE, decoded value)`` for each non-blank line of a JSONL or JSONL.gz file; a missing
    file, a line that is not UTF-8 or not JSON ends in one :class:`UserError` naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} file not found: {p}. Check the path in your data config (data.path=...).")
    for line_no, line in read_text_lines(p):
        if not line.strip():
            continue
        where = f"{p}:{line_no}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: not valid JSON ({err.msg}); each line must be one {shape}") from None
        yield where, line_no, value


def read_text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line of a UTF-8 text file (``.gz`` is decompressed).

    Raises:
        UserError: a line holds a NUL byte (a binary file) or bytes that are not UTF-8; the message
            names ``path:LINE``.
    """
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                yield line_no, _decode(raw, f"{p}:{line_no}")
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise UserError(f"cannot read {p}{' as gzip' if opener is gzip.open else ''}: {err}") from None


def load_text(path: str | os.PathLike, option: str) -> str:
    """The whole text of a UTF-8 file named by config ``option``; a binary file or one in another
    encoding is refused with the line of the first bad byte."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{option}={path}: no such file; give a UTF-8 text file")
    try:
        return "".join(line for _, line in read_text_lines(p))
    except UserError as e:
        raise UserError(f"{option}={path}: {e}") from None


def check_output_file(path: str | os.PathLike, option: str) -> None:
    """Refuse an output file path that cannot be written (a directory, or a parent that cannot be
    created), before any slow work whose result would then be lost."""
    from feedback_lm.checks import check_dir_creatable

    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{option} {path} is a directory; give a file path, e.g. {p / 'comparisons.jsonl'}")
    check_dir_creatable(p.parent, f"{option} {path}: its directory")


def _decode(raw: bytes, where: str) -> str:
    if b"\0" in raw:
        raise UserError(f"{where}: holds NUL bytes; this is a binary file, not UTF-8 text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{where}: byte {raw[err.start]:#04x} at column {err.start + 1} is not UTF-8; save the "
                        f"file as UTF-8 text") from None


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Write ``rows`` as JSONL (UTF-8, one object per line), atomically.

    The rows go to a temporary file in the same directory, which then replaces ``path`` with
    ``os.replace`` (atomic on POSIX and Windows within one file system): readers see the old file or
    the complete new one, never a partial write. Missing parent directories are created.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        # Leave no stray temp file behind; the original file (if any) is untouched.
        Path(tmp).unlink(missing_ok=True)
        raise


def _preview(value, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
