"""model.chat_template: prompts become one user turn of the tokenizer's chat template plus the assistant
header, in Policy.encode_prompts only; off, they are tokenized raw."""

from __future__ import annotations

import pytest

from feedback_lm.errors import UserError
from feedback_lm.policy import Policy
from tests.conftest import tiny_policy

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def templated_policy(on: bool):
    p = tiny_policy("tiny-gpt2")
    p.tokenizer.chat_template = TEMPLATE
    return Policy(p.model, p.tokenizer, max_length=p.max_length, chat_template=on)


def test_prompts_go_through_the_template_when_on():
    on, off = templated_policy(True), templated_policy(False)
    ids, mask = on.encode_prompts(["Q: 2+2\nA:", "hi"])
    want, want_mask = off.encode_prompts(["<user>Q: 2+2\nA:</user><assistant>", "<user>hi</user><assistant>"])
    assert ids.tolist() == want.tolist() and mask.tolist() == want_mask.tolist()
    assert off.encode_prompts(["hi"])[0].tolist() == [[b + 3 for b in b"hi"]], "off: raw text"


def test_responses_and_prefix_position_do_not_change():
    on, off = templated_policy(True), templated_policy(False)
    assert on.encode_responses([" 4"])[0].tolist() == off.encode_responses([" 4"])[0].tolist()
    assert on.prompt_suffix_tokens == off.prompt_suffix_tokens == 0, "a causal prompt ends at the assistant header"


def test_a_tokenizer_without_a_template_refuses_the_switch():
    p = tiny_policy("tiny-gpt2")
    with pytest.raises(UserError, match="model.chat_template=true.*no chat template"):
        Policy(p.model, p.tokenizer, chat_template=True)
