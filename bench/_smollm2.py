"""What the SmolLM2-135M benches (``bench/bench_smollm2_*.py``) share: the model, the two sizes and the seeds.

Every script runs at two sizes: the CPU size (the default; finishes within 2 hours on 2 CPU cores, one
seed) and the GPU size (``--trainer gpu``: three seeds, larger budgets, a few GPU minutes). ``--smoke``
shrinks everything to check the plumbing in minutes; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MODEL = ["model=smollm2-135m"]                              # LoRA, bf16 autocast (conf/model/smollm2-135m.yaml)
GPU = ["trainer=gpu", "trainer.precision=bf16-mixed", "model.attention=sdpa"]  # eager is the CPU choice


def add_size_args(p: argparse.ArgumentParser, work: str) -> None:
    p.add_argument("--trainer", default="cpu", choices=("cpu", "gpu"), help="gpu: the GPU size, 3 seeds")
    p.add_argument("--seeds", default=None, help="comma-separated (default: 0 on cpu, 0,1,2 on gpu)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the plumbing, numbers mean nothing")
    p.add_argument("--work", default=work, help="run directories and logs")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--set", action="append", default=[], metavar="NAME=INT",
                   help="replace one number of the chosen size (e.g. --set steps=40); the names are the script's")


def size(args, cpu, gpu, smoke, names=None):
    """The value of this run's size; with ``names`` (one per number), ``--set NAME=INT`` replaces numbers."""
    chosen = smoke if args.smoke else gpu if args.trainer == "gpu" else cpu
    if not names:
        return chosen
    given = dict(item.split("=", 1) for item in getattr(args, "set", []))
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise SystemExit(f"--set {unknown}: this script's sizes are {list(names)}")
    return tuple(int(given[n]) if n in given else v for n, v in zip(names, chosen))


def seeds(args) -> list[int]:
    text = args.seeds or ("0,1,2" if args.trainer == "gpu" and not args.smoke else "0")
    return [int(s) for s in text.split(",")]


def trainer_overrides(args) -> list[str]:
    return GPU if args.trainer == "gpu" else []


def model_config(*overrides: str) -> dict:
    """``conf/model/smollm2-135m.yaml`` (plus ``model.<key>=<value>`` overrides) as the plain mapping
    ``Policy.from_config`` takes, for benches that build the model in-process."""
    import sys

    from omegaconf import OmegaConf

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from feedback_lm.testing import compose

    return OmegaConf.to_container(compose([*MODEL, *overrides]).model, resolve=True)
