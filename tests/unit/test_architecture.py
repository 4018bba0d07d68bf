"""The plugin architecture rule: the core (``feedback_lm``) imports no plugin, and no plugin imports
another. A concept two algorithms need belongs in ``feedback_lm`` (see plugins/README.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    """Every module named by an ``import`` / ``from ... import`` anywhere in the file (also inside
    functions: a lazy import breaks the rule as much as a top-level one)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            if node.module == "plugins":  # from plugins import ppo
                names.update(f"plugins.{alias.name}" for alias in node.names)
    return names


def test_imported_modules_sees_lazy_and_from_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\ndef f():\n    from plugins.ppo import PPO\n    from plugins import sft\n")
    assert imported_modules(f) == {"os", "plugins.ppo", "plugins", "plugins.sft"}


@pytest.mark.parametrize("path", sorted((ROOT / "feedback_lm").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_imports_no_plugin(path):
    bad = sorted(m for m in imported_modules(path) if m == "plugins" or m.startswith("plugins."))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: move the shared piece into feedback_lm/"


@pytest.mark.parametrize("path", sorted((ROOT / "plugins").glob("*.py")), ids=lambda p: p.name)
def test_no_plugin_imports_another(path):
    own = f"plugins.{path.stem}"
    bad = sorted(m for m in imported_modules(path) if (m == "plugins" or m.startswith("plugins.")) and m != own)
    assert not bad, f"plugins/{path.name} imports {bad}: share code through feedback_lm/, not between plugins"
