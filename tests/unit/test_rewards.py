"""The reward= group: verifier, trained reward model, any callable by _target_."""

import torch
from hydra.utils import instantiate

from feedback_lm.rewards import ModelReward, RewardFn, VerifierReward
from feedback_lm.testing import compose


def constant_reward(prompts, responses, targets):
    return torch.full((len(responses),), 0.5)


def test_verifier_reward():
    fn = VerifierReward("word_sorting")
    r = fn(["p", "p", "p"], [" a b c", " b a c", "zzz"], ["a b c"] * 3)
    assert r[0] == 1.0 and 0.0 < r[1] < 1.0 and r[2] == 0.0
    assert VerifierReward("word_sorting", graded=False)(["p"], [" b a c"], ["a b c"]).tolist() == [0.0]
    assert isinstance(fn, RewardFn)


def test_reward_group_composes_and_builds(tmp_path):
    cfg = compose([f"run_dir={tmp_path}"])
    fn = instantiate(cfg.reward)
    assert isinstance(fn, VerifierReward) and fn.task == cfg.data.task
    cfg = compose([f"run_dir={tmp_path}", f"reward._target_={__name__}.constant_reward", "~reward.task",
                   "~reward.graded"])
    fn = instantiate(cfg.reward, _partial_=True)
    assert fn(["p"], ["r"], [None]).tolist() == [0.5]


def test_model_reward_matches_the_trained_model(tmp_path):
    from plugins.reward_model import RewardModel

    torch.manual_seed(0)
    rm = RewardModel({"name": "tiny-gpt2", "preset": "tiny-gpt2", "tokenizer": "byte"})
    rm.configure_model()
    rm.gain.fill_(2.0)
    rm.bias.fill_(-0.5)
    rm.save_pretrained(str(tmp_path / "rm"))
    cfg = compose([f"run_dir={tmp_path}", "reward=model", f"reward.path={tmp_path / 'rm'}", "reward.batch_size=2"])
    fn = instantiate(cfg.reward)
    assert isinstance(fn, ModelReward)
    prompts, responses = ["Q: a\nA:", "Q: bb\nA:", "Q: c\nA:"], [" x", " yy", " z"]
    torch.testing.assert_close(fn(prompts, responses, [None] * 3), rm.eval().rewards(prompts, responses).detach(),
                               atol=1e-5, rtol=0)


def test_callable_reward_function_class_and_errors():
    import pytest

    from feedback_lm.errors import UserError
    from feedback_lm.rewards import CallableReward

    fn = CallableReward("feedback_lm.testing.LetterReward")  # a class: built, then called
    assert fn(["p"], ["ab1"], [None]).tolist() == pytest.approx([2 / 3])
    length = CallableReward("feedback_lm.rewards.LengthReward", {"target_chars": 2})
    assert length(["p"], ["abcd"]).tolist() == [-1.0]
    with pytest.raises(UserError, match="reward.fn=no_such_module.f: cannot import"):
        CallableReward("no_such_module.f")
    with pytest.raises(UserError, match="reward.kwargs is for a class"):
        CallableReward("feedback_lm.ops.masked_mean", {"x": 1})
