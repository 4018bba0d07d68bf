"""Unit tests for feedback_lm.rollout: Rollout padding/rows/collate and RolloutBuffer."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from feedback_lm.rollout import Rollout, RolloutBuffer, _dist_min

PAD = 9


def make_rollout(prompt_lens, response_lens, offset=0, with_fields=True):
    """A minimally padded rollout whose tokens encode (row, position) so mix-ups are visible."""
    rows = []
    for i, (p, r) in enumerate(zip(prompt_lens, response_lens)):
        b = i + offset
        row = {
            "prompt_ids": torch.arange(p) + 100 * b + 10,
            "response_ids": torch.arange(r) + 100 * b + 50,
        }
        if with_fields:
            row["logprobs"] = -(torch.arange(r, dtype=torch.float32) + 1) / (b + 1)
            row["values"] = torch.arange(r, dtype=torch.float32) + b
            row["scores"] = torch.tensor(float(b))
            row["prompt"] = f"prompt {b}"
            row["response"] = f"response {b}"
            row["feedback"] = {"b": b}
        rows.append(row)
    return Rollout.collate(rows, pad_token_id=PAD)


def row_ids(rollout):
    """The episode number of every row (decoded from the first response token)."""
    return [int(r["response_ids"][0] - 50) // 100 for r in rollout.rows()]


# --- Rollout ------------------------------------------------------------------------------------------


def test_collate_pads_prompts_left_and_responses_right():
    r = make_rollout([2, 3], [1, 3])
    assert r.prompt_ids.tolist() == [[PAD, 10, 11], [110, 111, 112]]
    assert r.prompt_mask.tolist() == [[False, True, True], [True, True, True]]
    assert r.response_ids.tolist() == [[50, PAD, PAD], [150, 151, 152]]
    assert r.response_mask.tolist() == [[True, False, False], [True, True, True]]
    # Per-token floats are right-padded with 0.0, whatever the pad token id.
    assert r.values.tolist() == [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]
    assert r.logprobs[0].tolist() == [-1.0, 0.0, 0.0]
    assert r.prompt_mask.dtype == torch.bool and r.prompt_ids.dtype == torch.long
    assert r.scores.tolist() == [0.0, 1.0]
    assert r.prompt == ["prompt 0", "prompt 1"] and r.feedback == [{"b": 0}, {"b": 1}]
    assert r.ref_logprobs is None and r.instruction is None
    assert len(r) == 2


def test_rows_strip_padding():
    r = make_rollout([2, 3], [1, 3])
    rows = r.rows()
    assert rows[0]["prompt_ids"].tolist() == [10, 11]
    assert rows[0]["response_ids"].tolist() == [50]
    assert rows[0]["logprobs"].tolist() == [-1.0]
    assert rows[1]["values"].tolist() == [1.0, 2.0, 3.0]
    assert rows[1]["scores"].item() == 1.0 and rows[1]["scores"].dim() == 0
    assert rows[1]["response"] == "response 1"
    assert "ref_logprobs" not in rows[0] and "instruction" not in rows[0]


def test_row_round_trip():
    r = make_rollout([2, 4, 1], [3, 1, 2])
    assert Rollout.collate(r.rows(), pad_token_id=PAD) == r
    assert Rollout.collate(r.rows(), pad_token_id=PAD + 1) != r  # pad value is part of the batch


def test_collate_trims_to_the_longest_row():
    r = make_rollout([2, 4, 1], [3, 1, 2])
    sub = r.select([0, 2])
    assert sub.prompt_ids.shape == (2, 4)  # select keeps the width ...
    trimmed = Rollout.collate(sub.rows(), PAD)
    assert trimmed.prompt_ids.shape == (2, 2) and trimmed.response_ids.shape == (2, 3)  # ... collate trims
    assert trimmed.prompt_ids.tolist() == [[10, 11], [PAD, 210]]
    assert trimmed.response_ids.tolist() == [[50, 51, 52], [250, 251, PAD]]


def test_cat_mixes_widths():
    a = make_rollout([1], [4])
    b = make_rollout([5, 2], [1, 2], offset=1)
    both = Rollout.cat([a, b], pad_token_id=PAD)
    assert both.prompt_ids.shape == (3, 5) and both.response_ids.shape == (3, 4)
    assert both == make_rollout([1, 5, 2], [4, 1, 2])


def test_select_rows_and_texts():
    r = make_rollout([2, 3, 1], [1, 3, 2])
    sub = r.select(torch.tensor([2, 0]))
    assert row_ids(sub) == [2, 0]
    assert sub.prompt == ["prompt 2", "prompt 0"]
    assert sub.scores.tolist() == [2.0, 0.0]
    assert r.select([2, 0]) == sub
    assert r.select(torch.tensor([True, False, True])) == r.select([0, 2])


def test_masks_are_normalised_to_bool():
    r = Rollout(
        prompt_ids=torch.tensor([[0, 1]], dtype=torch.int32),
        prompt_mask=torch.tensor([[0, 1]]),
        response_ids=torch.tensor([[2, 0]]),
        response_mask=torch.tensor([[1.0, 0.0]]),
    )
    assert r.prompt_mask.dtype == torch.bool and r.response_mask.dtype == torch.bool
    assert r.prompt_ids.dtype == torch.long


def test_to_moves_tensors_and_keeps_texts():
    r = make_rollout([2], [2])
    moved = r.to("cpu")
    assert moved == r and moved.device == torch.device("cpu") and moved.prompt is r.prompt


@pytest.mark.parametrize(
    "change, message",
    [
        ({"prompt_mask": torch.ones(2, 4, dtype=torch.bool)}, "prompt_mask"),
        ({"response_ids": torch.zeros(3, 3, dtype=torch.long)}, "batch size"),
        ({"logprobs": torch.zeros(2, 2)}, r"logprobs \(2, 2\) must have the shape of response_ids \(2, 3\)"),
        ({"values": torch.zeros(2, 4)}, "values"),
        ({"scores": torch.zeros(2, 1)}, r"scores \(2, 1\)"),
        ({"prompt": ["only one"]}, "prompt has 1 entries"),
        ({"prompt_ids": torch.zeros(6, dtype=torch.long)}, "2-D"),
        ({"prompt_mask": torch.tensor([[True, False, True], [True, True, True]])}, "LEFT-padded"),
        ({"response_mask": torch.tensor([[False, True, True], [True, True, True]])}, "RIGHT-padded"),
    ],
)
def test_shape_validation(change, message):
    r = make_rollout([2, 3], [1, 3])
    ids = ("prompt_ids", "prompt_mask", "response_ids", "response_mask")
    fields = {name: getattr(r, name) for name in ids}
    fields.update(logprobs=r.logprobs, scores=r.scores, prompt=r.prompt)
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        Rollout(**fields)


def test_collate_rejects_inconsistent_rows():
    rows = make_rollout([2, 3], [1, 3]).rows()
    with pytest.raises(ValueError, match="row 1 has keys"):
        bare = {"prompt_ids": rows[1]["prompt_ids"], "response_ids": rows[1]["response_ids"]}
        Rollout.collate([rows[0], bare], PAD)
    with pytest.raises(ValueError, match="at least one row"):
        Rollout.collate([], PAD)
    with pytest.raises(ValueError, match="only fields of Rollout"):
        Rollout.collate([{**rows[0], "advantage": 1.0}], PAD)
    bad = dict(rows[1], logprobs=torch.zeros(2))
    with pytest.raises(ValueError, match="row 0 has 2 logprobs for 3 response tokens"):
        Rollout.collate([bad], PAD)


def test_field_groups_cover_the_dataclass():
    import dataclasses

    names = {f.name for f in dataclasses.fields(Rollout)}
    ids = {"prompt_ids", "prompt_mask", "response_ids", "response_mask"}
    assert names == ids | set(Rollout.TOKEN_FIELDS) | set(Rollout.SAMPLE_FIELDS) | set(Rollout.TEXT_FIELDS)


# --- RolloutBuffer ------------------------------------------------------------------------------------


def filled_buffer(n, **kwargs):
    buf = RolloutBuffer(pad_token_id=PAD, **kwargs)
    buf.add(make_rollout([1 + i % 3 for i in range(n)], [1 + i % 4 for i in range(n)]))
    return buf


def test_minibatches_cover_every_row_once_per_epoch():
    buf = filled_buffer(10, seed=3)
    batches = list(buf.minibatches(batch_size=4, epochs=2))
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    first = [i for b in batches[:3] for i in row_ids(b)]
    second = [i for b in batches[3:] for i in row_ids(b)]
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
    assert first != second  # a fresh permutation each epoch
    assert first != list(range(10))  # actually shuffled
    # Each minibatch is minimally padded for its own rows.
    for b in batches:
        assert b.prompt_mask[:, 0].any() and b.response_mask[:, -1].any()


def test_minibatches_in_the_buffers_layout_are_rows_of_the_rollout():
    """same_layout: each minibatch is exactly ``rollout.select(rows)``, the padding its forward pass saw."""
    r = make_rollout([2, 5, 1, 3], [3, 1, 4, 2])
    buf = RolloutBuffer(pad_token_id=PAD, seed=1)
    buf.add(r)
    for b in buf.minibatches(batch_size=2, epochs=2, same_layout=True):
        assert b == r.select(row_ids(b))
    minimal = next(iter(buf.minibatches(batch_size=1, shuffle=False)))
    assert minimal.prompt_ids.shape == (1, 2)  # the default stays minimal
    assert Rollout.collate(r.rows()[:1], PAD, widths=(4, 6)).prompt_ids.tolist() == [[PAD, PAD, 10, 11]]


def test_minibatches_drop_last_and_no_shuffle():
    buf = filled_buffer(10)
    batches = list(buf.minibatches(batch_size=4, drop_last=True, shuffle=False))
    assert [row_ids(b) for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert buf.num_minibatches(4, drop_last=True) == 2 and buf.num_minibatches(4) == 3
    assert list(RolloutBuffer().minibatches(4)) == []
    with pytest.raises(ValueError, match="batch_size"):
        buf.num_minibatches(0)


def test_minibatches_reproducible_with_seed():
    def order(seed):
        return [row_ids(b) for b in filled_buffer(10, seed=seed).minibatches(3, epochs=2)]

    assert order(0) == order(0)
    assert order(0) != order(1)


def test_sample_without_replacement():
    buf = filled_buffer(6)
    s = buf.sample(4)
    assert len(s) == 4 and len(set(row_ids(s))) == 4
    assert sorted(row_ids(buf.sample(100))) == list(range(6))  # capped at len
    with pytest.raises(ValueError):
        RolloutBuffer().sample(1)


def test_clear_and_read_only_rows():
    buf = filled_buffer(5)
    assert len(buf) == 5 and isinstance(buf.rows, tuple)
    buf.clear()
    assert len(buf) == 0 and buf.rows == ()


def test_pool_evicts_oldest_first():
    buf = RolloutBuffer(capacity=5, pad_token_id=PAD)
    buf.add(make_rollout([1, 1, 1], [1, 1, 1]))  # episodes 0,1,2
    buf.add(make_rollout([2, 2, 2, 2], [1, 1, 1, 1], offset=3))  # episodes 3..6 -> 0,1 evicted
    assert len(buf) == 5
    assert [int(r["response_ids"][0] - 50) // 100 for r in buf.rows] == [2, 3, 4, 5, 6]
    buf.add(make_rollout([1] * 7, [1] * 7, offset=10))  # one add larger than the pool keeps its newest
    assert [int(r["response_ids"][0] - 50) // 100 for r in buf.rows] == [12, 13, 14, 15, 16]
    with pytest.raises(ValueError, match="capacity"):
        RolloutBuffer(capacity=0)


def test_dedupe_skips_rows_already_present():
    buf = RolloutBuffer(capacity=3, pad_token_id=PAD, dedupe_key=lambda row: row["response"])
    r = make_rollout([1, 1], [1, 1])
    assert buf.add(r) == 2
    assert buf.add(r) == 0  # identical outputs skipped
    assert buf.add(Rollout.cat([r.select([1]), r.select([1])], PAD)) == 0
    assert buf.add(make_rollout([1, 1], [1, 1], offset=2)) == 2  # evicts episode 0 ...
    assert [row["response"] for row in buf.rows] == ["response 1", "response 2", "response 3"]
    assert buf.add(r.select([0])) == 1  # ... whose key is free again
    within_one_add = RolloutBuffer(dedupe_key=lambda row: row["response"])
    assert within_one_add.add(Rollout.cat([r, r], PAD)) == 2


def test_state_dict_round_trip(tmp_path):
    buf = filled_buffer(7, seed=5, capacity=6, dedupe_key=lambda row: row["prompt"])
    next(iter(buf.minibatches(2)))  # advance the generator
    path = tmp_path / "buf.pt"
    torch.save(buf.state_dict(), path)
    state = torch.load(path, weights_only=True)  # Lightning checkpoints may load with weights_only

    restored = RolloutBuffer(capacity=6, pad_token_id=PAD, dedupe_key=lambda row: row["prompt"])
    restored.load_state_dict(state)
    assert len(restored) == 6
    assert Rollout.collate(restored.rows, PAD) == Rollout.collate(buf.rows, PAD)
    # Same generator state -> the same future shuffles; dedupe keys were rebuilt.
    assert [row_ids(b) for b in restored.minibatches(2)] == [row_ids(b) for b in buf.minibatches(2)]
    assert restored.add(Rollout.collate([buf.rows[-1]], PAD)) == 0


# --- Equal minibatch counts across ranks ----------------------------------------------------------------


def test_dist_min_without_process_group_is_identity():
    assert not dist.is_initialized()
    assert _dist_min(7) == 7


def _count_minibatches_worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        buf = filled_buffer(10 if rank == 0 else 6, seed=rank)
        synced = [len(b) for b in buf.minibatches(batch_size=4)]
        unsynced = [len(b) for b in buf.minibatches(batch_size=4, sync_ranks=False)]
        two_epochs = len(list(buf.minibatches(batch_size=4, epochs=2)))
        with open(f"{out_dir}/rank{rank}.txt", "w") as f:
            f.write(repr((synced, unsynced, two_epochs)))
    finally:
        dist.destroy_process_group()


def test_equal_minibatch_counts_across_ranks(tmp_path):
    # Rank 0 holds 10 rows (3 minibatches of 4), rank 1 holds 6 (2): both must step exactly twice.
    mp.spawn(_count_minibatches_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    results = {rank: eval((tmp_path / f"rank{rank}.txt").read_text()) for rank in (0, 1)}
    assert results[0] == ([4, 4], [4, 4, 2], 4)
    assert results[1] == ([4, 2], [4, 2], 4)


def test_advantages_ride_through_rows_and_collate():
    """Per-sample advantages (RLOO, GRPO) are a Rollout field: kept by rows(), re-padded by collate()."""
    ro = Rollout(torch.ones(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.bool),
                 torch.tensor([[5, 1], [6, 0]]), torch.tensor([[True, True], [True, False]]),
                 advantages=torch.tensor([0.5, -0.5]))
    rows = ro.rows()
    assert float(rows[1]["advantages"]) == -0.5
    back = Rollout.collate(rows[::-1], pad_token_id=0)
    assert back.advantages.tolist() == [-0.5, 0.5]
    with pytest.raises(ValueError, match="advantages"):
        Rollout(ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask, advantages=torch.zeros(3))
