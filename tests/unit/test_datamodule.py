"""Datamodules: the data shape they declare, counted caps and skips, argument ranges, the fixed BBH split."""

from __future__ import annotations

import json

import pytest
import torch

from feedback_lm.data.datamodule import ComparisonDataModule, TaskDataModule
from feedback_lm.errors import UserError


def test_data_kinds():
    assert TaskDataModule.DATA_KIND == "tasks" and ComparisonDataModule.DATA_KIND == "comparisons"


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, r"data\.batch_size=0 is out of range: it must be >= 1"),
    ({"batch_size": -4}, r"data\.batch_size=-4 is out of range"),
    ({"eval_batch_size": 0}, r"data\.eval_batch_size=0"),
    ({"val_fraction": 1.0}, r"data\.val_fraction=1\.0 is out of range: it must be \[0, 1\)"),
    ({"template": "no placeholder"}, r"data\.template='no placeholder' has no \{input\} placeholder"),
])
def test_ranges_and_template_are_checked(kwargs, message):
    with pytest.raises(UserError, match=message):
        TaskDataModule(**kwargs)
    with pytest.raises(UserError, match=message):
        ComparisonDataModule(**kwargs)


def test_jsonl_val_cap_is_counted(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n" for i in range(20)))
    dm = TaskDataModule(source="jsonl", path=str(path), val_fraction=0.5, num_val=3)
    dm.setup()
    assert dm.data_report == {"data/val_rows_capped": 7, "data/train_rows": 10, "data/val_rows": 3}


def test_comparison_caps_and_skips_are_counted(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(10)]
    rows.append({"prompt": "dup", "chosen": "same", "rejected": "same"})
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"c\.jsonl:11: chosen and rejected are the same text"):
        ComparisonDataModule(source="jsonl", path=str(path)).setup()
    dm = ComparisonDataModule(source="jsonl", path=str(path), skip_degenerate=True, val_fraction=0.2,
                              num_train=5, num_val=1)
    dm.setup()
    assert dm.data_report == {"data/skipped_degenerate": 1, "data/train_rows_capped": 3, "data/val_rows_capped": 1,
                              "data/train_rows": 5, "data/val_rows": 1}


def test_bbh_split_does_not_follow_the_run_seed(shared_data):
    """The held-out BBH examples are the same for every run seed (the split's own seed is 1)."""
    path = str(shared_data / "bbh" / "object_counting.json")
    vals = []
    for seed in (0, 7):
        dm = TaskDataModule(source="bbh", path=path, seed=seed, num_val=1000)
        dm.setup()
        vals.append([r["prompt"] for r in dm.val_rows])
    assert vals[0] == vals[1] and len(vals[0]) == 50
    moved = TaskDataModule(source="bbh", path=path, split_seed=2, num_val=1000)
    moved.setup()
    assert [r["prompt"] for r in moved.val_rows] != vals[0]


def _batches(order, batch_size):
    return [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


def test_grouped_sampler_is_a_permutation_with_homogeneous_batches():
    from feedback_lm.data.datamodule import ResumableSampler
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 200, (1000,), generator=g).tolist()
    plain = list(ResumableSampler(1000, seed=5))
    grouped = list(ResumableSampler(1000, seed=5, lengths=lengths, batch_size=8, group=25))
    assert sorted(grouped) == list(range(1000)), "every row once per epoch"
    def padding(order):  # padded positions per batch, summed
        return sum(8 * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in _batches(order, 8))
    assert padding(grouped) < 0.1 * padding(plain)
    # the batches are shuffled across the epoch: lengths do not simply decrease from the first batch
    firsts = [lengths[b[0]] for b in _batches(grouped, 8)]
    assert firsts != sorted(firsts, reverse=True)
    # deterministic per (seed, epoch), and another epoch is another order
    again = ResumableSampler(1000, seed=5, lengths=lengths, batch_size=8, group=25)
    epoch0, epoch1 = list(again), list(again)
    assert epoch0 == grouped and epoch1 != epoch0


def test_grouped_sampler_resumes_mid_epoch_and_keeps_a_partial_batch_last():
    from feedback_lm.data.datamodule import ResumableSampler
    lengths = [(i * 37) % 101 for i in range(30)]
    full = ResumableSampler(30, seed=1, lengths=lengths, batch_size=4, group=3)
    epoch0, epoch1 = list(full), list(full)
    assert list(ResumableSampler(30, seed=1, epoch=1, start=8, lengths=lengths, batch_size=4, group=3)) == epoch1[8:]
    assert len(epoch0) == 30 and epoch1 != epoch0
    from feedback_lm.data.datamodule import grouped_by_length
    order = grouped_by_length(torch.arange(10), torch.tensor([5, 9, 1, 7, 3, 8, 2, 6, 4, 0]), batch_size=4,
                              group=1, generator=torch.Generator().manual_seed(0))
    batches = {tuple(order[:4].tolist()), tuple(order[4:8].tolist())}
    assert batches == {(1, 3, 0, 2), (5, 7, 4, 6)}, "each group sorted longest first, whole batches shuffled"
    assert order[8:].tolist() == [8, 9], "the partial batch stays last (drop_last drops it)"


def test_group_by_length_is_off_unless_set():
    for setting, expected in [(False, False), (True, True)]:
        dm = TaskDataModule(num_train=64, num_val=4, batch_size=8, group_by_length=setting)
        dm.setup()
        sampler = dm.train_dataloader().sampler
        assert (sampler.lengths is not None) is expected
        assert sorted(sampler) == list(range(64))
