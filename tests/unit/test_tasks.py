"""Tests for feedback_lm.data.tasks: docs/algorithms.md §5.1 exact match, graded scores, BBH-format generators.

Generated examples are checked two ways against the real BBH files (../shared/data/bbh, skipped when
absent): (1) their text skeletons (the text with names/items/objects replaced by placeholders) must
be ones that occur in the real files, and (2) an independent solver, written here from the task's
wording and first validated on all real examples, must re-derive every generated target.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from feedback_lm.data import tasks
from feedback_lm.data.tasks import (
    TASKS,
    WORDS,
    Example,
    format_prompt,
    format_response,
    generate,
    is_correct,
    normalize_output,
    normalize_target,
    register_task,
    score,
    task_names,
)
from feedback_lm.errors import UserError

BBH_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "bbh"

SIZES = {"three": 3, "five": 5, "seven": 7}  # the BBH task sizes
NUMBER = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}


def real(task: str) -> list[Example]:
    """All examples of a real BBH task file, or skip the test when the data is not checked out."""
    path = BBH_DIR / f"{task}.json"
    if not path.is_file():
        pytest.skip(f"real BBH data not found at {path} (expected ../shared/data/bbh next to the repo)")
    rows = json.loads(path.read_text())["examples"]
    return [Example(r["input"], r["target"]) for r in rows]


# --------------------------------------------------------------------------------------------------
# Normalisers and correctness: docs/algorithms.md §5.9 #2
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "target", "correct"),
    [
        ("(A).", "(a)", True),
        (" ( B ) ", "(B)", True),
        ("(C)", "(B)", False),
        (" 14", "14", True),
        ("apple banana.", "apple banana", True),
        ("Apple Banana", "apple\nbanana", True),  # target newlines become spaces, then vanish
        ("apple\nbanana", "apple banana", False),  # output newlines are kept by norm_out
        ("(B)", "(B) ", True),
        ("", "(A)", False),
    ],
)
def test_is_correct(output, target, correct):
    assert is_correct(output, target) is correct


def test_normalizers_match_spec_formulas():
    s = " A. b\nC "
    assert normalize_output(s) == s.replace(" ", "").replace(".", "").lower() == "ab\nc"
    assert normalize_target(s) == s.lower().replace("\n", " ").replace(" ", "").replace(".", "") == "abc"


# --------------------------------------------------------------------------------------------------
# Graded scores
# --------------------------------------------------------------------------------------------------


def test_score_is_one_iff_correct():
    assert score("tracking_shuffled_objects_three_objects", " (B)", "(B)") == 1.0
    assert score("object_counting", "14.", "14") == 1.0
    assert score("word_sorting", " apple pear", "apple pear") == 1.0


def test_score_options_only_rewards_the_shape():
    task = "logical_deduction_three_objects"
    assert score(task, "(C)", "(B)") == pytest.approx(0.1)
    assert score(task, " (c) ", "(B)") == pytest.approx(0.1)
    assert score(task, "C", "(B)") == 0.0
    assert score(task, "banana", "(B)") == 0.0


def test_score_numbers_closer_is_better():
    s = [score("object_counting", str(v), "10") for v in (9, 8, 5, 30)]
    assert s[0] == pytest.approx(0.25) and s == sorted(s, reverse=True) and s[-1] > 0
    assert score("object_counting", "ten", "10") == 0.0
    assert score("object_counting", "", "10") == 0.0


def test_score_word_lists_rank_near_misses_higher():
    target = "apple banana cherry date"
    one_swap = score("word_sorting", "apple banana date cherry", target)
    reversed_ = score("word_sorting", "date cherry banana apple", target)
    missing = score("word_sorting", "apple banana cherry", target)
    garbage = score("word_sorting", "zzz", target)
    assert 0.9 >= missing > one_swap > reversed_ >= garbage == 0.0
    assert score("word_sorting", "apple\nbanana", "apple banana") == pytest.approx(0.9)  # wrong, but close


def test_score_infers_kind_for_unregistered_tasks():
    # Real BBH tasks without a generator (e.g. date_understanding) still get a sensible rule.
    assert score("date_understanding", "(A)", "(B)") == pytest.approx(0.1)
    assert score("some_count", "9", "10") == pytest.approx(0.25)
    assert 0 < score("some_list", "a b d", "a b c") < 0.9


def test_score_stays_in_unit_interval_on_generated_data():
    rng = random.Random(0)
    for task in task_names():
        for ex in generate(task, 20, seed=1):
            wrong = generate(task, 1, seed=rng.randrange(10**6))[0].target
            s = score(task, wrong, ex.target)
            assert 0.0 <= s <= 1.0
            assert (s == 1.0) == is_correct(wrong, ex.target)


# --------------------------------------------------------------------------------------------------
# Prompt / response format
# --------------------------------------------------------------------------------------------------


def test_format_prompt_and_response():
    ex = Example(input="How many {x}?", target="(B)")
    assert format_prompt(ex) == "Q: How many {x}?\nA:"  # braces in the input are left alone
    instruction = "Solve the question with correct answer."
    hir = format_prompt(ex, "{instruction}\n\nQ: {input}\nA:", instruction=instruction)
    assert hir == "Solve the question with correct answer.\n\nQ: How many {x}?\nA:"
    assert format_response(ex) == " (B)"
    assert is_correct(format_response(ex), ex.target)
    with pytest.raises(UserError, match="instruction"):
        format_prompt(ex, "{instruction} {input}")
    with pytest.raises(UserError, match="not a valid format string"):
        format_prompt(ex, "Q: {input\nA:")


# --------------------------------------------------------------------------------------------------
# Registry and errors
# --------------------------------------------------------------------------------------------------


def test_builtin_tasks_are_registered():
    for prefix in ("tracking_shuffled_objects", "logical_deduction"):
        for size in SIZES:
            assert f"{prefix}_{size}_objects" in TASKS
    assert {"object_counting", "word_sorting"} <= set(task_names())
    assert task_names() == sorted(TASKS)


def test_unknown_task_lists_known_names():
    with pytest.raises(UserError) as err:
        generate("object_countin", 3, seed=0)
    msg = str(err.value)
    assert "object_countin" in msg
    for name in task_names():
        assert name in msg


def test_unknown_knob_names_valid_ones():
    with pytest.raises(UserError) as err:
        generate("word_sorting", 3, seed=0, max_word=3)
    msg = str(err.value)
    assert "max_word" in msg and "min_words" in msg and "max_words" in msg and "vocab_size" in msg
    with pytest.raises(UserError, match="n_swaps"):
        generate("tracking_shuffled_objects_five_objects", 3, seed=0, swaps=2)


@pytest.mark.parametrize(
    ("task", "knobs"),
    [
        ("word_sorting", {"min_words": 5, "max_words": 3}),
        ("word_sorting", {"vocab_size": 3, "max_words": 5}),
        ("word_sorting", {"min_words": 0}),
        ("object_counting", {"max_count": 0}),
        ("object_counting", {"min_items": 9}),  # musical instruments only have 8 kinds
        ("object_counting", {"distractor_prob": 1.5}),
        ("object_counting", {"categories": ["planets"]}),
        ("tracking_shuffled_objects_three_objects", {"n_objects": 8}),
        ("tracking_shuffled_objects_three_objects", {"n_swaps": -1}),
        ("tracking_shuffled_objects_three_objects", {"variants": ["chess"]}),
        ("logical_deduction_three_objects", {"n_objects": 1}),
        ("logical_deduction_three_objects", {"absolute_prob": "often"}),
        ("logical_deduction_three_objects", {"scenarios": []}),
    ],
)
def test_bad_knob_values_are_user_errors(task, knobs):
    with pytest.raises(UserError):
        generate(task, 2, seed=0, **knobs)


def test_bad_n_is_a_user_error():
    with pytest.raises(UserError):
        generate("word_sorting", -1, seed=0)
    assert generate("word_sorting", 0, seed=0) == []


def test_register_task_adds_a_user_task():
    name = "test_copy_word"

    @register_task(name, kind="words")
    def copy_word(rng, n_letters=3):
        word = "".join(rng.choice("abc") for _ in range(n_letters))
        return Example(input=f"Copy: {word}", target=word)

    try:
        assert name in task_names()
        exs = generate(name, 5, seed=0, n_letters=4)
        assert all(len(e.target) == 4 and e.input == f"Copy: {e.target}" for e in exs)
        with pytest.raises(UserError, match="n_letters"):
            generate(name, 1, seed=0, letters=2)
        with pytest.raises(UserError, match="already registered"):
            register_task(name)(copy_word)
        register_task(name, overwrite=True)(copy_word)
        assert score(name, "ab", "abc") < 0.9  # registered kind "words", not inferred
    finally:
        TASKS.pop(name, None)
        tasks._TASK_KINDS.pop(name, None)


# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(TASKS))
def test_generation_is_deterministic_per_seed(task):
    a = generate(task, 10, seed=7)
    assert a == generate(task, 10, seed=7)
    assert a != generate(task, 10, seed=8)
    assert all(isinstance(e, Example) and isinstance(e.input, str) and isinstance(e.target, str) for e in a)


# --------------------------------------------------------------------------------------------------
# Independent solvers, validated on the real files first
# --------------------------------------------------------------------------------------------------

# object_counting: our own map from noun stems (regexes after a word boundary) to the asked categories.
_CATEGORY_STEMS = {
    "musical instruments": "piano flute trombone violin accordion clarinet drum trumpet",
    "fruits": "apple banana strawberr peach orange plum raspberr grape nectarine blackberr",
    "animals": "bear cats?\\b chicken cow dog donkey duck fish frog goat mouse mice pig rabbit snail snake",
    "vegetables": "cabbage carrot cauliflower garlic broccoli lettuce onion potato celery yam",
    "objects": "bed cars?\\b chair couch fridge lamp microwave oven stove table toaster",
}
_QUANTITY = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
             "eight": 8, "nine": 9, "ten": 10}
_COUNT_RE = re.compile(r"I have (?P<list>.+)\. How many (?P<cat>[a-z ]+) do I have\?")


def _category(entry: str) -> str:
    hits = [
        c for c, stems in _CATEGORY_STEMS.items() if any(re.search(r"\b" + s, entry) for s in stems.split())
    ]
    assert len(hits) == 1, entry
    return hits[0]


def _entries(listing: str) -> list[str]:
    return re.split(r", and |, | and ", listing)


def solve_object_counting(text: str) -> str:
    m = _COUNT_RE.fullmatch(text)
    assert m, text
    total = 0
    for entry in _entries(m["list"]):
        qty, _ = entry.split(" ", 1)
        if _category(entry) == m["cat"]:
            total += _QUANTITY[qty]
    return str(total)


def solve_word_sorting(text: str) -> str:
    words = text.removeprefix("Sort the following words alphabetically: List: ").split(" ")
    return " ".join(sorted(words))


_HOLD_RE = re.compile(
    r"([A-Z][a-z]+) (?:gets|is dancing with|has a|is playing) (.+?)(?:, and |, |\.\n| and )"
)
_SWAP_RE = re.compile(r"(?:First|Then|Finally), ([A-Z][a-z]+) and ([A-Z][a-z]+) (?:swap|switch|trade)")
_ASK_RE = re.compile(
    r"At the end of the \w+, ([A-Z][a-z]+) (?:has the|has|is dancing with|is playing)\nOptions:"
)


def _options(text: str) -> list[str]:
    block = text.split("\nOptions:\n", 1)[1]
    lines = block.split("\n")
    assert [line[:4] for line in lines] == [f"({chr(65 + i)}) " for i in range(len(lines))]
    return [line[4:] for line in lines]


def solve_tracking(text: str) -> str:
    rest = text.split("\nOptions:\n")[0].split(": ", 1)[1]  # after "they each have a partner: "
    holding = dict(_HOLD_RE.findall(rest.split("\n")[0].removesuffix(".") + ".\n"))
    assert len(holding) == len(_options(text)), text
    for a, b in _SWAP_RE.findall(rest):
        holding[a], holding[b] = holding[b], holding[a]
    who = _ASK_RE.search(text).group(1)
    return f"({chr(65 + _options(text).index(holding[who]))})"


_CMP = [  # (regex, True if the subject is nearer the low end: left / older / cheaper / higher)
    (r"(?P<a>.+) is to the left of (?P<b>.+)", True),
    (r"(?P<a>.+) is to the right of (?P<b>.+)", False),
    (r"(?P<a>.+) is older than (?P<b>.+)", True),
    (r"(?P<a>.+) is newer than (?P<b>.+)", False),
    (r"(?P<a>.+) are less expensive than (?P<b>.+)", True),
    (r"(?P<a>.+) are more expensive than (?P<b>.+)", False),
    (r"(?P<a>.+) finished above (?P<b>.+)", True),
    (r"(?P<a>.+) finished below (?P<b>.+)", False),
]
_ORD = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6}


def _position(phrase: str, n: int) -> int:
    """0-based position on the low-to-high axis named by a BBH phrase."""
    ends = {"leftmost": 0, "rightmost": n - 1, "oldest": 0, "newest": n - 1, "cheapest": 0,
            "most expensive": n - 1, "last": n - 1}
    if phrase in ends:
        return ends[phrase]
    if phrase in _ORD:  # golf: "finished second"
        return _ORD[phrase] - 1
    m = re.fullmatch(
        r"(\w+)(?: from the |-)(left|right|oldest|newest|cheapest|most expensive|to-last)", phrase
    )
    assert m, phrase
    k = _ORD[m[1]]
    return k - 1 if m[2] in ("left", "oldest", "cheapest") else n - k


def _subject(ref: str) -> str:
    return re.sub(r"^(the|The) ", "", ref)


def _deduction_fact(sentence: str, n: int):
    for pattern, low in _CMP:
        m = re.fullmatch(pattern, sentence)
        if m:
            return "cmp", _subject(m["a"]), _subject(m["b"]), low
    m = re.fullmatch(r"(?P<a>.+) (?:is|are) the (?P<p>.+)", sentence) or re.fullmatch(
        r"(?P<a>.+) finished (?P<p>.+)", sentence
    )
    assert m, sentence
    return "abs", _subject(m["a"]), _position(m["p"], n), None


def solve_logical_deduction(text: str) -> str:
    story = text.split("\nOptions:\n")[0]
    m = re.search(r"there (?:are|were) (\w+) \w+: (.+?)\. |sells (\w+) fruits: (.+?)\. ", story)
    n = NUMBER[m[1] or m[3]]
    objects = [re.sub(r"^(a|an) ", "", o) for o in _entries(m[2] or m[4])]
    assert len(objects) == n
    idx = {o: i for i, o in enumerate(objects)}
    facts = []
    for sentence in story[m.end():].rstrip(".").split(". "):
        kind, a, b, low = _deduction_fact(sentence, n)
        facts.append((kind, idx[a], b if kind == "abs" else idx[b], low))
    solutions = []
    for perm in itertools.permutations(range(n)):  # perm[i] = position of object i
        if all(perm[a] == b if kind == "abs" else (perm[a] < perm[b]) == low for kind, a, b, low in facts):
            solutions.append(perm)
    assert len(solutions) == 1, f"{len(solutions)} solutions: {text}"
    true = []
    for i, option in enumerate(_options(text)):
        _, subject, position, _ = _deduction_fact(option, n)
        if solutions[0][idx[subject]] == position:
            true.append(i)
    assert len(true) == 1, text
    return f"({chr(65 + true[0])})"


SOLVERS = {
    "object_counting": solve_object_counting,
    "word_sorting": solve_word_sorting,
    **{f"tracking_shuffled_objects_{s}_objects": solve_tracking for s in SIZES},
    **{f"logical_deduction_{s}_objects": solve_logical_deduction for s in SIZES},
}

EASY = {
    "object_counting": {
        "min_items": 1, "max_items": 3, "max_count": 2, "distractor_prob": 0.5, "max_distractors": 1
    },
    "word_sorting": {"min_words": 2, "max_words": 3, "vocab_size": 20},
    **{f"tracking_shuffled_objects_{s}_objects": {"n_swaps": 1} for s in SIZES},
    **{f"logical_deduction_{s}_objects": {"absolute_prob": 0.9} for s in SIZES},
}


@pytest.mark.parametrize("task", sorted(SOLVERS))
def test_solver_reproduces_every_real_target(task):
    """The test's own solver is right on all real examples, so it can judge generated ones."""
    for ex in real(task):
        assert SOLVERS[task](ex.input) == ex.target, ex.input


@pytest.mark.parametrize("task", sorted(SOLVERS))
@pytest.mark.parametrize("difficulty", ["bbh", "easy"])
def test_generated_targets_are_right(task, difficulty):
    knobs = EASY[task] if difficulty == "easy" else {}
    for ex in generate(task, 150, seed=3, **knobs):
        assert SOLVERS[task](ex.input) == ex.target, ex.input


# --------------------------------------------------------------------------------------------------
# Format: generated text uses only skeletons that occur in the real files
# --------------------------------------------------------------------------------------------------


def _placeholders(text: str, names: list[str], tag: str) -> str:
    for name in sorted(set(names), key=len, reverse=True):
        text = re.sub(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])", tag, text)
    return text


def tracking_skeleton(text: str) -> str:
    """The whole text with people -> <P> and items -> <I>: one skeleton per story and size."""
    text = _placeholders(text, _options(text), "<I>")
    return _placeholders(text, ["Alice", "Bob", "Claire", "Dave", "Eve", "Fred", "Gertrude"], "<P>")


def deduction_skeletons(text: str) -> list[str]:
    """Header+intro, then each statement and option, with the objects -> <O>."""
    m = re.search(r": (.+?)\. ", text)
    listed = _entries(m[1])
    nouns = [re.sub(r"^(a|an) ", "", o) for o in listed]
    story, options = text.split("\nOptions:\n")
    head = story[: m.end()].replace(m[1], "<LIST>")
    body = _placeholders(story[m.end():], nouns, "<O>").rstrip(".").split(". ")
    return [head, *body, *(_placeholders(o[4:], nouns, "<O>") for o in options.split("\n"))]


def counting_entries(text: str) -> list[str]:
    return _entries(_COUNT_RE.fullmatch(text)["list"])


_WORDS_RE = re.compile(r"Sort the following words alphabetically: List: [a-z&']+(?: [a-z&']+)+")


@pytest.mark.parametrize("size", sorted(SIZES))
def test_tracking_text_matches_real_skeletons(size):
    task = f"tracking_shuffled_objects_{size}_objects"
    real_skeletons = {tracking_skeleton(e.input) for e in real(task)}
    assert len(real_skeletons) == 5  # one per story variant: books, dance, ball, gift, soccer
    generated = {tracking_skeleton(e.input) for e in generate(task, 200, seed=0)}
    assert generated == real_skeletons
    real_items = {o for e in real(task) for o in _options(e.input)}
    assert {o for e in generate(task, 200, seed=0) for o in _options(e.input)} <= real_items


@pytest.mark.parametrize("size", sorted(SIZES))
def test_logical_deduction_text_matches_real_skeletons(size):
    task = f"logical_deduction_{size}_objects"
    real_parts = {p for e in real(task) for p in deduction_skeletons(e.input)}
    generated = generate(task, 400, seed=0)
    gen_parts = {p for e in generated for p in deduction_skeletons(e.input)}
    assert gen_parts <= real_parts, sorted(gen_parts - real_parts)
    real_listed = {o for e in real(task) for o in _entries(re.search(r": (.+?)\. ", e.input)[1])}
    assert {o for e in generated for o in _entries(re.search(r": (.+?)\. ", e.input)[1])} <= real_listed
    # Every statement / option form BBH uses is also generated.
    assert real_parts <= gen_parts, sorted(real_parts - gen_parts)
    real_counts = Counter(e.input.count(". ") for e in real(task))
    gen_counts = Counter(e.input.count(". ") for e in generated)
    assert gen_counts.most_common(1)[0][0] == real_counts.most_common(1)[0][0]  # usually n-1 statements


def test_object_counting_text_matches_real_format():
    real_exs = real("object_counting")
    real_entries = {x for e in real_exs for x in counting_entries(e.input)}
    real_questions = {_COUNT_RE.fullmatch(e.input)["cat"] for e in real_exs}
    plural_nouns = {x.split(" ", 1)[1] for x in real_entries if x.split(" ")[0] not in ("a", "an")}
    generated = generate("object_counting", 300, seed=0)
    for ex in generated:
        assert _COUNT_RE.fullmatch(ex.input) and ex.target.isdigit()
        assert ", and " in ex.input  # BBH lists always end with ", and " (even two items)
        assert _COUNT_RE.fullmatch(ex.input)["cat"] in real_questions
        for entry in counting_entries(ex.input):
            qty, noun = entry.split(" ", 1)
            if qty in ("a", "an"):
                assert entry in real_entries  # same nouns, same a/an
            else:
                # BBH never writes more than one donkey, so that one plural cannot be checked here.
                assert qty in ("two", "three", "four", "five") and (noun in plural_nouns or noun == "donkeys")
    # BBH-like spread of answers (real: 2..18).
    targets = [int(e.target) for e in generated]
    assert min(targets) >= 2 and 15 <= max(targets) <= 30


def test_word_sorting_text_matches_real_format():
    for ex in real("word_sorting"):
        assert _WORDS_RE.fullmatch(ex.input)
    generated = generate("word_sorting", 300, seed=0)
    for ex in generated:
        assert _WORDS_RE.fullmatch(ex.input)
    counts = Counter(len(e.target.split()) for e in generated)
    assert min(counts) == 2 and max(counts) == 20  # BBH: uniform over 2..20 words


def test_word_list():
    assert 250 <= len(WORDS) and len(set(WORDS)) == len(WORDS)
    assert all(re.fullmatch(r"[a-z]+", w) for w in WORDS)


# --------------------------------------------------------------------------------------------------
# Difficulty knobs
# --------------------------------------------------------------------------------------------------


def test_word_sorting_knobs():
    exs = generate("word_sorting", 200, seed=0, min_words=2, max_words=3, vocab_size=12)
    vocab = {w for e in exs for w in e.target.split()}
    assert {len(e.target.split()) for e in exs} == {2, 3}
    assert len(vocab) <= 12 and vocab <= set(WORDS)
    assert len({w[0] for w in vocab}) >= 6  # a small vocabulary still spans the alphabet
    for e in exs:
        assert len(set(e.target.split())) == len(e.target.split())  # no repeated word, as in BBH


def test_object_counting_knobs():
    exs = generate("object_counting", 200, seed=0, min_items=1, max_items=3, max_count=1, distractor_prob=0.0)
    for e in exs:
        entries = counting_entries(e.input) if ", and " in e.input else [_COUNT_RE.fullmatch(e.input)["list"]]
        assert 1 <= len(entries) <= 3
        assert all(x.split(" ")[0] in ("a", "an") for x in entries)
        assert int(e.target) == len(entries)  # no distractors, one of each
    assert any(" and " not in e.input for e in exs)  # a single item: "I have a lamp."
    fruit = generate("object_counting", 50, seed=0, categories=["fruits"], distractor_prob=1.0)
    assert all(e.input.endswith("How many fruits do I have?") for e in fruit)
    assert all(solve_object_counting(e.input) == e.target for e in fruit)
    for e in fruit:  # distractors are listed but not counted
        assert int(e.target) < sum(_QUANTITY[x.split(" ")[0]] for x in counting_entries(e.input))


def test_tracking_knobs():
    for n_swaps in (0, 1, 2, 6):
        for e in generate("tracking_shuffled_objects_three_objects", 40, seed=n_swaps, n_swaps=n_swaps):
            assert len(_SWAP_RE.findall(e.input)) == n_swaps
            assert solve_tracking(e.input) == e.target
    exs = generate("tracking_shuffled_objects_three_objects", 30, seed=0, n_objects=4, variants="dance")
    assert all(e.input.startswith("Alice, Bob, Claire, and Dave are dancers") for e in exs)
    assert all(solve_tracking(e.input) == e.target for e in exs)
    assert {e.target for e in exs} == {"(A)", "(B)", "(C)", "(D)"}
    # Consecutive swaps never repeat a pair, as in BBH.
    for e in generate("tracking_shuffled_objects_seven_objects", 50, seed=0):
        swaps = [frozenset(s) for s in _SWAP_RE.findall(e.input)]
        assert all(a != b for a, b in zip(swaps, swaps[1:]))


def test_logical_deduction_knobs():
    exs = generate("logical_deduction_three_objects", 50, seed=0, n_objects=2, scenarios=["golfers"])
    for e in exs:
        assert "a set of two objects" in e.input and "there were two golfers" in e.input
        assert solve_logical_deduction(e.input) == e.target
    for absolute_prob, kinds in ((0.0, {"cmp"}), (1.0, {"abs"})):
        for e in generate("logical_deduction_five_objects", 30, seed=0, absolute_prob=absolute_prob):
            story = e.input.split("\nOptions:\n")[0]
            statements = story.split(": ", 1)[1].split(". ", 1)[1].rstrip(".").split(". ")
            assert {_deduction_fact(s, 5)[0] for s in statements} == kinds
            assert solve_logical_deduction(e.input) == e.target


def test_default_answers_are_balanced():
    cases = [("tracking_shuffled_objects_three_objects", 3), ("logical_deduction_five_objects", 5)]
    for task, letters in cases:
        counts = Counter(e.target for e in generate(task, 500, seed=0))
        assert len(counts) == letters and min(counts.values()) > 500 / letters / 2


def test_generated_split_keeps_the_natural_length_mix_and_is_disjoint():
    """Drawing the held-out set first: on the default word_sorting (2-3 of 30 words) every two-word list
    occurs among 20,000 training examples, so de-duplicating a later held-out draw would leave only
    three-word lists. Held out first, both lengths stay, about half each, and train never sees them."""
    from collections import Counter

    from feedback_lm.data.datamodule import generated_split

    difficulty = {"min_words": 2, "max_words": 3, "vocab_size": 30}
    train, val = generated_split("word_sorting", 20000, 200, seed=0, difficulty=difficulty)
    assert len(train) == 20000 and len(val) == 200
    lengths = Counter(len(e.target.split()) for e in val)
    assert 70 <= lengths[2] <= 130 and lengths[2] + lengths[3] == 200
    assert not {e.input for e in val} & {e.input for e in train}
    assert len({e.input for e in val}) == 200, "held-out inputs are distinct"
    again = generated_split("word_sorting", 20000, 200, seed=0, difficulty=difficulty)
    assert [e.input for e in again[1]] == [e.input for e in val], "deterministic for a seed"


def test_generated_split_on_a_tiny_task_space_still_trains():
    from feedback_lm.data.datamodule import generated_split

    # 2 words of 2: two possible lists; the held-out draw takes both, so nothing is left to train on.
    train, val = generated_split("word_sorting", 50, 5, seed=0,
                                 difficulty={"min_words": 2, "max_words": 2, "vocab_size": 2})
    assert len(val) == 2 and train == []
