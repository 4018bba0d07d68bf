"""What a person sees: tables of generations in the console and in the logger."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

_console = Console(stderr=False, soft_wrap=False)


def _clip(text: str, width: int) -> str:
    text = text.replace("\n", "⏎ ")
    return text if len(text) <= width else "…" + text[-(width - 1):]


def print_samples(rows: Sequence[dict[str, Any]], title: str, width: int = 60) -> None:
    """Print a table with one row per sample (columns = the dict keys), long text clipped from the left
    so the end of a prompt (the question) stays visible."""
    if not rows:
        return
    table = Table(title=title, show_lines=False)
    for key in rows[0]:
        table.add_column(key, overflow="fold")
    for r in rows:
        table.add_row(*[_clip(str(v), width) if isinstance(v, str) else f"{v}" for v in r.values()])
    _console.print(table)


def log_samples(loggers: Sequence[Any], key: str, rows: Sequence[dict[str, Any]], step: int) -> None:
    """Send a sample table to the loggers that can show one (wandb tables, tensorboard text)."""
    if not rows:
        return
    columns = list(rows[0])
    for logger in loggers:
        name = type(logger).__name__
        if name == "WandbLogger":
            logger.log_text(key=key, columns=columns, data=[[str(r[c]) for c in columns] for r in rows])
        elif name == "TensorBoardLogger":
            md = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
            md += "\n".join("| " + " | ".join(str(r[c]).replace("\n", "⏎").replace("|", "\\|") for c in columns)
                            + " |" for r in rows)
            logger.experiment.add_text(key, md, global_step=step)
