"""Admin commands (create, add-labeler, stats, export), sampling provenance, quality stats, reward-model data."""

from __future__ import annotations

import json

import pytest

from feedback_lm.data.comparisons import Comparison, load_comparisons, write_comparisons
from feedback_lm.label.__main__ import main
from feedback_lm.label.config import tiers_to_ranking
from feedback_lm.label.stats import agreement, label_stats
from feedback_lm.label.store import open_campaign
from tests.label.helpers import items


def run(capsys, *argv: str) -> str:
    main(list(argv))
    return capsys.readouterr().out


def fail(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def campaign(tmp_path, capsys):
    """A rank campaign over 3 pre-sampled items plus one gold item, overlap 2, with three labelers."""
    src = tmp_path / "sampled.jsonl"
    write_comparisons(src, [Comparison(it["prompt"], it["responses"], [[0], [1, 2, 3]], meta=it["meta"])
                            for it in items(3)])
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"prompt": "gold q", "responses": ["w", "x", "y", "z"], "ranking": [3, [0, 1], 2]}) + "\n")
    out = run(capsys, "create", str(tmp_path / "c"), "--items", str(src), "--gold", str(gold), "--overlap", "2",
              "--likert", "--flags", "harmful,fails_instruction", "--instructions", "Rank by correctness.")
    assert "3 items, 1 gold items" in out
    tokens = {}
    for name in ("ada", "bob", "cy"):
        out = run(capsys, "add-labeler", str(tmp_path / "c"), name)
        tokens[name] = out.strip().splitlines()[-1]
    return tmp_path / "c", tokens


def gold_of(store, item_id: int) -> list[list[int]]:
    """The stored gold answer (gold rows are stored with their responses shuffled)."""
    with store.db.transaction(write=False) as cur:
        return json.loads(cur.execute("SELECT gold FROM items WHERE id = ?", (item_id,)).one()["gold"])


def label_all(store, name_to_id: dict[str, int], rankings: dict[str, list], wrong_on_gold=()) -> None:
    """Each person labels everything they are given with their fixed ranking, and gold items with the
    gold answer (or its reverse, for the people in ``wrong_on_gold``)."""
    for name, labeler_id in name_to_id.items():
        n = 0
        while (asg := store.next_item(labeler_id)) is not None:
            ranking = rankings[name]
            if asg.gold:
                gold = gold_of(store, asg.item_id)
                ranking = ([i for tier in reversed(gold) for i in tier] if name in wrong_on_gold
                           else tiers_to_ranking(gold))
            store.submit(labeler_id, asg.id, {"idempotency_key": f"{name}-key-{n:04d}", "ranking": ranking,
                                              "likert": [5, 4, 3, 2], "flags": [[], [], ["harmful"], []]})
            n += 1


def test_create_label_stats_export(campaign, capsys, tmp_path):
    directory, tokens = campaign
    store = open_campaign(directory)
    assert store.config.instructions == "Rank by correctness." and store.config.overlap == 2
    ids = {name: store.labeler_for_token(token)[0] for name, token in tokens.items()}
    assert len(set(ids.values())) == 3  # the printed tokens sign in
    label_all(store, ids, {"ada": [3, [0, 1], 2], "bob": [3, [0, 1], 2], "cy": [2, 1, 0, 3]}, wrong_on_gold={"cy"})
    store.close()

    out = run(capsys, "stats", str(directory), "--json", str(tmp_path / "stats.json"))
    assert "ada" in out and "gold agr" in out
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["campaign"]["labels"] == 9 and stats["campaign"]["items_complete"] == 3  # 3x2 + gold x3
    ada, cy = stats["labelers"]["ada"], stats["labelers"]["cy"]
    assert ada["gold_items"] == 1 and ada["gold_agreement"] == 1.0
    assert cy["gold_agreement"] < 0.5 and cy["peer_agreement"] < ada["peer_agreement"]
    assert (ada["labels"], stats["labelers"]["bob"]["labels"], cy["labels"]) == (4, 4, 1)  # cy only finds gold
    assert ada["seconds_median"] >= 0 and ada["flagged_responses"] == 4

    export = tmp_path / "labels.jsonl"
    out = run(capsys, "export", str(directory), "--out", str(export))
    assert "wrote 9 comparison rows" in out
    rows = load_comparisons(export)
    assert len(rows) == 9
    meta = rows[0].meta
    for key in ("labeler", "seconds", "likert", "flags", "display_order", "policy", "sampling", "seed"):
        assert key in meta, key
    assert sum("gold" in r.meta for r in rows) == 3
    run(capsys, "export", str(directory), "--out", str(tmp_path / "no_gold.jsonl"), "--no-gold")
    assert len(load_comparisons(tmp_path / "no_gold.jsonl")) == 6


@pytest.mark.slow  # imports Lightning and the plugin (~10 s of CPU)
def test_ties_survive_into_reward_model_pairs(campaign, tmp_path):
    from feedback_lm.data.datamodule import ComparisonDataModule
    from plugins.reward_model import ranking_pairs

    directory, tokens = campaign
    store = open_campaign(directory)
    ada = store.labeler_for_token(tokens["ada"])[0]
    asg = store.next_item(ada)
    store.submit(ada, asg.id, {"idempotency_key": "ada-tie-0001", "ranking": [[0, 2], 3, 1],
                               "likert": [5, 5, 5, 5], "flags": [[], [], [], []]})
    store.export_labeled(tmp_path / "ties.jsonl")
    store.close()
    dm = ComparisonDataModule(source="jsonl", path=str(tmp_path / "ties.jsonl"), val_fraction=0.0)
    dm.setup()
    (row,) = dm.train_rows
    assert row.tiers == [[0, 2], [3], [1]]
    pairs = set(ranking_pairs(row.tiers))
    assert pairs == {(0, 3), (2, 3), (0, 1), (2, 1), (3, 1)}  # no pair between the tied 0 and 2


def test_sampled_campaign_records_policy_sampling_seed(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Q: sort b a\\nA:\nQ: sort d c\\nA:\n")
    out = run(capsys, "create", str(tmp_path / "s"), "--model", "tiny-gpt2", "--prompts", str(prompts), "--k", "3",
              "--mode", "best", "--max-new-tokens", "4", "--temperature", "0.7", "--seed", "5", "--device", "cpu")
    assert "2 items" in out
    store = open_campaign(tmp_path / "s")
    labeler = store.labeler_for_token(store.add_labeler("ada"))[0]
    asg = store.next_item(labeler)
    assert asg.prompt == "Q: sort b a\nA:" and len(asg.responses) == 3
    store.submit(labeler, asg.id, {"idempotency_key": "ada-best-0001", "best": 1})
    (row,) = store.export_labeled()
    assert row.best == 1 and row.meta["policy"] == "tiny-gpt2" and row.meta["seed"] == 5
    assert row.meta["sampling"] == {"temperature": 0.7, "top_k": 0, "top_p": 1.0, "max_new_tokens": 4, "k": 3}
    assert store.config.source["policy"] == "tiny-gpt2"
    store.close()


def test_cli_errors_are_one_clear_line(tmp_path, capsys, campaign):
    directory, _ = campaign
    assert "already holds a campaign" in fail(capsys, "create", str(directory), "--items", "x.jsonl")
    assert "--prompts FILE or --task" in fail(capsys, "create", str(tmp_path / "n"), "--model", "tiny-gpt2")
    assert "give --model" in fail(capsys, "create", str(tmp_path / "n"))
    assert "not a campaign directory" in fail(capsys, "export", str(tmp_path), "--out", str(tmp_path / "x.jsonl"))
    assert "exists already" in fail(capsys, "add-labeler", str(directory), "ada")
    assert "overlap" in fail(capsys, "create", str(tmp_path / "n2"), "--items", str(tmp_path / "sampled.jsonl"),
                             "--overlap", "0")
    assert not (tmp_path / "n2" / "campaign.json").exists()


def test_gold_items_are_spread_through_the_campaign():
    from feedback_lm.label.campaign import interleave_gold

    regular, gold = [{"n": i} for i in range(6)], [{"g": 0}, {"g": 1}]
    mixed = interleave_gold(regular, gold)
    assert ["g" in x for x in mixed] == [False, False, True, False, False, True, False, False]
    assert [x["n"] for x in mixed if "n" in x] == list(range(6))
    assert interleave_gold(regular, []) == regular and interleave_gold([], gold) == gold


def test_agreement_metric():
    assert agreement([[0], [1], [2]], [[0], [1], [2]]) == 1.0
    assert agreement([[0], [1], [2]], [[2], [1], [0]]) == 0.0
    assert agreement([[0, 1], [2]], [[0], [1], [2]]) == pytest.approx(2 / 3)  # only the (0, 1) tie differs
    assert agreement([[1], [0, 2, 3]], [[1], [0, 2, 3]]) == 1.0  # best-of-K read as two tiers
    with pytest.raises(ValueError):
        agreement([[0], [1]], [[0], [1], [2]])


def test_stats_without_gold_or_peers():
    row = {"item_id": 1, "labeler": "ada", "seconds": 3.0, "late": True, "flags": [[], []], "likert": None,
           "gold": None, "tiers": [[0], [1]]}
    s = label_stats([row])["labelers"]["ada"]
    assert s["gold_agreement"] is None and s["peer_agreement"] is None and s["late"] == 1
    assert s["seconds_median"] == 3.0
