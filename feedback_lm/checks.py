"""Range checks for a plugin's arguments, in one place at the top of its ``__init__``.

Plugins are built before any model or data loads, so a bad value fails in seconds with one message
that names the option, the value and the allowed range::

    check_args("algo", lr=(lr, "> 0"), minibatch_size=(minibatch_size, ">= 1"),
               kl_coef=(kl_coef, ">= 0"), top_p=(top_p, "(0, 1]"), clip=(clip, "[0, 1)"))

A rule is ``"> x"``, ``">= x"``, ``"< x"``, ``"<= x"`` or an interval ``"(a, b]"`` / ``"[a, b)"`` /
``"[a, b]"`` / ``"(a, b)"`` (``inf`` allowed), or a tuple of the allowed values (``schedule=(schedule,
SCHEDULES)``). ``None`` values pass (an optional argument left unset).

:func:`check_config` checks a whole run config the same way before anything is built: every setting of
an instantiated node against its ``_target_``'s ``__init__`` signature, the run-level keys, values left
open (``???``) and the model settings; :func:`check_data_kind` the data shape an algorithm needs.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import operator
import os
import re
import sys
import types
import typing
from collections import abc
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from feedback_lm.errors import UserError

_CMP = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_RULE = re.compile(r"^\s*(>=|<=|>|<)\s*(\S+)\s*$")
_INTERVAL = re.compile(r"^\s*([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])\s*$")


def holds(value: float, rule: str) -> bool:
    """Whether ``value`` satisfies ``rule`` (see the module docstring for the forms)."""
    if m := _RULE.match(rule):
        return _CMP[m[1]](value, float(m[2]))
    if m := _INTERVAL.match(rule):
        lo, hi = float(m[2]), float(m[3])
        above = value >= lo if m[1] == "[" else value > lo
        below = value <= hi if m[4] == "]" else value < hi
        return above and below
    raise ValueError(f"unknown range rule {rule!r}")


def check_args(prefix: str, **checks: tuple[object, str | tuple]) -> None:
    """Raise one :class:`UserError` naming ``<prefix>.<name>`` for the first value outside its rule.

    Args:
        prefix: the config group the values come from (``"algo"``, ``"data"``, ``"model"``).
        **checks: ``name=(value, rule)``; a tuple rule lists the allowed values.
    """
    for name, (value, rule) in checks.items():
        if value is None:
            continue
        if isinstance(rule, tuple):
            if value not in rule:
                raise UserError(f"{prefix}.{name}={value!r} is not one of {list(rule)}")
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{prefix}.{name}={value!r} must be a number {rule}")
        if isinstance(value, float) and math.isnan(value) or not holds(value, rule):
            raise UserError(f"{prefix}.{name}={value!r} is out of range: it must be {rule}")


# ------------------------------------------------------------------------------------ whole configs
_HYDRA_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})
_SEQUENCES = (list, tuple, set, frozenset, abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection)
_MAPPINGS = (dict, abc.Mapping, abc.MutableMapping)


def check_node(prefix: str, node: Mapping[str, Any], given: Iterable[str] = ()) -> None:
    """Refuse a setting the node's ``_target_`` does not take, or a value its annotation rules out.

    Hydra would pass ``algo.lr=abc`` or ``trainer.max_steps=2.5`` through to the constructor, where they
    fail deep inside a library (or, worse, are accepted). Checking the resolved values against the
    ``__init__`` signature of the ``_target_`` catches them before anything is built.

    Args:
        prefix: the config path of ``node`` (``"algo"``, ``"trainer"``, ``"logger.csv"``), for messages.
        node: the resolved config node, with ``_target_``.
        given: argument names the caller passes itself (not read from the node).
    """
    from hydra.utils import get_object

    target = node.get("_target_")
    try:
        obj = get_object(target)
    except Exception as e:  # noqa: BLE001 - import errors of every kind end in the same advice
        raise UserError(f"{prefix}._target_={target!r} cannot be imported ({_first_line(e)}); check the class "
                        f"path and that its module is on PYTHONPATH") from None
    fn = obj.__init__ if inspect.isclass(obj) else obj
    params = inspect.signature(fn).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    hints = _type_hints(fn, params)
    for key, value in node.items():
        if key in _HYDRA_KEYS or key in given:
            continue
        if key not in params:
            if open_ended:
                continue
            known = sorted(k for k, p in params.items() if k != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL)
            raise UserError(f"{prefix}.{key} is not a setting of {target}; its settings are {known}")
        expected = hints.get(key, Any)
        if not _fits(value, expected):
            raise UserError(f"{prefix}.{key}={value!r} has the wrong type: expected {_type_name(expected)}, "
                            f"got {type(value).__name__}")


def _type_hints(fn, params) -> dict[str, Any]:
    """Annotations of ``fn`` as types; one that cannot be resolved (a name imported only for type
    checkers) counts as ``Any``."""
    fn = inspect.unwrap(fn)
    with contextlib.suppress(Exception):  # a name that does not resolve: one annotation at a time below
        return typing.get_type_hints(fn)
    hints = {}
    for name, p in params.items():
        ann = p.annotation
        if isinstance(ann, str):
            try:
                ann = eval(ann, getattr(fn, "__globals__", {}))  # the module's own annotation text
            except Exception:  # noqa: BLE001
                ann = Any
        hints[name] = Any if ann is inspect.Parameter.empty else ann
    return hints


def _fits(value: Any, tp: Any) -> bool:
    """Whether a YAML value (None, bool, int, float, str, list, dict) can be an argument of type ``tp``.
    Classes a YAML value cannot be judged against (a model config, a callable) accept anything."""
    if tp is Any or tp is inspect.Parameter.empty:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if tp is type(None) or tp is None:
        return value is None
    if origin is typing.Literal:
        return value in args
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    container = origin or tp
    if container in _SEQUENCES:
        if not isinstance(value, list | tuple):
            return False
        if container is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(_fits(v, args[0]) for v in value)
    if container in _MAPPINGS:
        return isinstance(value, Mapping)
    return True


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names + (["null"] if type(None) in args else []))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("collections.abc.", "")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


# Run-level keys of conf/train.yaml and their types.
_RUN_KEYS: dict[str, Any] = {"seed": int, "checkpoint_every_n_steps": int, "eval_before": bool, "eval_after": bool,
                             "save_model": bool, "ckpt_path": str | None, "run_dir": str, "malloc_keep_freed": bool,
                             "frozen_cast_cache": bool | typing.Literal["auto"]}
# The trainer's arguments that run.py passes itself.
_TRAINER_GIVEN = ("logger", "callbacks", "plugins", "default_root_dir")


def check_config(cfg: Mapping[str, Any]) -> None:
    """Check a resolved run config before anything is built: values left open (``???``), the run-level
    keys, the settings and types of every node that is instantiated (``algo``, ``data``, ``trainer``,
    ``logger.*``) and the model settings. Raises one :class:`UserError` naming the first bad option."""
    from omegaconf import DictConfig, OmegaConf

    from feedback_lm.models import ModelConfig

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    _check_missing(cfg)
    for key, tp in _RUN_KEYS.items():
        if key in cfg and not _fits(cfg[key], tp):
            raise UserError(f"{key}={cfg[key]!r} has the wrong type: expected {_type_name(tp)}")
    if cfg.get("checkpoint_every_n_steps", 0) < 0:
        raise UserError(f"checkpoint_every_n_steps={cfg['checkpoint_every_n_steps']} is out of range: it must be "
                        f">= 0 (0: only at the end of training)")
    check_node("algo", cfg["algo"])
    check_node("data", cfg["data"])
    trainer = dict(cfg["trainer"])
    if trainer.get("precision") == "auto":  # feedback_lm.precision resolves it before the Trainer is built
        trainer["precision"] = None
    check_node("trainer", trainer, given=_TRAINER_GIVEN)
    for name, node in (cfg.get("logger") or {}).items():
        check_node(f"logger.{name}", node)
    if "model" in cfg:
        ModelConfig.coerce(cfg["model"])


def _check_missing(cfg: Mapping[str, Any]) -> None:
    """``???`` values in the nodes a run builds; one copied into another node (``algo.reward: ${reward}``)
    is named by its source (``reward.path``)."""
    built = {k: cfg[k] for k in ("algo", "data", "trainer", "logger", "model", *_RUN_KEYS) if k in cfg}
    missing = sorted(_missing_paths(built))
    if not missing:
        return
    key = missing[0]
    parts = key.split(".")
    source = next((".".join(parts[i:]) for i in range(1, len(parts)) if _lookup(cfg, parts[i:]) == "???"), key)
    raise UserError(f"{source} must be set (the composed config leaves it as ???): add {source}=... to the command")


def _missing_paths(node: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _missing_paths(v, f"{prefix}{k}.")
    elif node == "???":
        yield prefix[:-1]


def _lookup(node: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def check_experiment() -> None:
    """Refuse ``experiment=<name>`` when no such experiment config exists (Hydra's optional default
    would otherwise drop the name silently)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not GlobalHydra.instance().is_initialized():
        return
    name = HydraConfig.get().runtime.choices.get("experiment")
    if name in (None, "null"):
        return
    known = GlobalHydra.instance().config_loader().get_group_options("experiment")
    if name not in known:
        raise UserError(f"experiment={name} does not exist; known experiments: {', '.join(sorted(known))}")


# What to add on the command line for each kind of data.
DATA_OPTIONS = {"tasks": "data=word_sorting (or data=bbh, data=jsonl)", "comparisons": "data=comparisons"}
_KIND_WORDS = {"tasks": "prompt/target task data", "comparisons": "comparison data"}


def check_data_kind(algo_target: str, data_target: str) -> None:
    """Refuse a datamodule whose ``DATA_KIND`` is not the one the plugin declares (a plugin without
    ``DATA_KIND`` takes any), naming the ``data=`` option to use."""
    from hydra.utils import get_object

    need = getattr(get_object(algo_target), "DATA_KIND", None)
    have = getattr(get_object(data_target), "DATA_KIND", None)
    if need is None or have is None or need == have:
        return
    algo = algo_target.rsplit(".", 2)[-2]
    raise UserError(f"algo={algo} needs {_KIND_WORDS.get(need, need)}, but data._target_={data_target} gives "
                    f"{_KIND_WORDS.get(have, have)}: add {DATA_OPTIONS.get(need, f'a data= option of kind {need!r}')}")


def check_dir_creatable(path: str | os.PathLike, option: str) -> None:
    """Raise a :class:`UserError` naming ``option`` when directory ``path`` cannot be created or written."""
    p = Path(path).expanduser().absolute()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{option}={path} cannot be created: {probe} is a file, not a directory; choose another "
                        f"{option}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{option}={path} cannot be created: {probe} is not writable; choose another {option}")


class RunDirCheck(Callback):
    """Hydra callback: refuse an output directory that cannot be created before Hydra tries to create it
    (which would end in a traceback)."""

    def on_run_start(self, config, **kwargs: Any) -> None:
        _exit_on_user_error(check_dir_creatable, config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        _exit_on_user_error(check_dir_creatable, config.hydra.sweep.dir, "hydra.sweep.dir")


def _exit_on_user_error(fn, *args: Any) -> None:
    try:
        fn(*args)
    except UserError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        sys.exit(2)
