"""Built-in tasks: BIG-Bench Hard (BBH) style generators, the spec's exact-match check, graded scores.

Each generator writes examples in the *exact* text format of the real BBH files (same wording, same
``Options:\\n(A) ...`` layout, same target format), so a model trained on generated data can be
evaluated on the real files (`feedback_lm.data.files.load_bbh`) without a format shift. Answers come
from actually simulating the puzzle (counting, sorting, swapping, solving the ordering), never from a
lookup. Vocabulary (object names, people, books, ...) is taken from BBH; the word list for
``word_sorting`` is our own.

Tiny byte-level models are trained from scratch on these tasks in minutes, so every generator has
difficulty knobs (keyword arguments) that make an easier variant *in the same format*; the defaults
reproduce BBH's distribution as measured on the 250 real examples of each task:

- ``object_counting``: ``min_items=2, max_items=10, max_count=5, distractor_prob=0.2,
  max_distractors=3, categories=None``
- ``word_sorting``: ``min_words=2, max_words=20, vocab_size=None``
- ``tracking_shuffled_objects_{three,five,seven}_objects``: ``n_objects=3|5|7, n_swaps=None``
  (= n_objects), ``variants=None``
- ``logical_deduction_{three,five,seven}_objects``: ``n_objects=3|5|7, absolute_prob=0.25,
  scenarios=None``

Users add tasks with :func:`register_task`; :func:`generate` is the one entry point the data modules
call. Correctness is spec ``ALGORITHMS.md`` §5.1 exact match after normalisation (:func:`is_correct`);
:func:`score` adds partial credit for wrong answers so a simulated labeler can rank them.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from feedback_lm.errors import UserError

__all__ = [
    "Example",
    "TASKS",
    "WORDS",
    "format_prompt",
    "format_response",
    "generate",
    "is_correct",
    "normalize_output",
    "normalize_target",
    "register_task",
    "score",
    "task_names",
]


@dataclass(frozen=True)
class Example:
    """One question/answer pair, with the field names of the BBH files.

    Attributes:
        input: the question text (for multiple choice, with ``\\nOptions:\\n(A) ...`` appended).
        target: the gold answer: ``"(B)"``, ``"14"`` or ``"apple banana cherry"``.
    """

    input: str
    target: str


# --------------------------------------------------------------------------------------------------
# Correctness (docs/algorithms.md §5.1) and graded scores
# --------------------------------------------------------------------------------------------------


def normalize_output(s: str) -> str:
    """Normalise a model output: docs/algorithms.md §5.1 ``norm_out`` (drop spaces and dots, lower-case).

    Newlines are deliberately *kept* (the reference code does not touch them in outputs).
    """
    return s.replace(" ", "").replace(".", "").lower()


def normalize_target(s: str) -> str:
    """Normalise a gold target: docs/algorithms.md §5.1 ``norm_tgt`` (lower-case, newline -> space, drop spaces/dots)."""
    return s.lower().replace("\n", " ").replace(" ", "").replace(".", "")


def is_correct(output: str, target: str) -> bool:
    """Spec §5.1 correctness: ``normalize_output(output) == normalize_target(target)``.

    Example: ``is_correct("(A).", "(a)")`` and ``is_correct(" ( B ) ", "(B)")`` are True.
    """
    return normalize_output(output) == normalize_target(target)


_OPTION_RE = re.compile(r"\([A-Z]\)")
_INT_RE = re.compile(r"-?\d+")

# The answer kind of each built-in task; tasks not listed here (real BBH files, user tasks registered
# without `kind=`) get their kind from the target's shape, see `_answer_kind`.
_TASK_KINDS: dict[str, str] = {}


def _answer_kind(task: str, target: str) -> str:
    kind = _TASK_KINDS.get(task)
    if kind is not None:
        return kind
    if _OPTION_RE.fullmatch(target.strip()):
        return "option"
    if _INT_RE.fullmatch(target.strip()):
        return "number"
    return "words"


def score(task: str, output: str, target: str) -> float:
    """Graded score in [0, 1]: 1.0 iff :func:`is_correct`, else partial credit that ranks wrong answers.

    The rule depends on the answer kind: the one the task was registered with (see
    :func:`register_task`), or, for other task names, the shape of ``target``.

    - ``option`` (``"(B)"``): 0.1 if the output at least has the ``(X)`` shape, else 0.0. A wrong
      letter carries no information about closeness, so only the format earns anything.
    - ``number`` (``"14"``): ``0.5 / (1 + |output - target|)`` if the output is an integer, else 0.0
      (so ``"14\\n"``, wrong under §5.1 because outputs keep newlines, still scores 0.5).
    - ``words`` (``"apple banana"``): ``0.9 * (positions + pairs) / 2`` on lower-cased, dot-free
      tokens, where *positions* is the share of positions holding the right word (over the longer of
      the two lists) and *pairs* the share of the target's adjacent pairs that also appear adjacent in
      the output (so a list with one word moved still gets most of the credit).

    Every wrong answer scores at most 0.9, strictly below a correct one.

    Args:
        task: the task name (selects the rule for registered tasks).
        output: the model's answer, e.g. ``" (B)"``.
        target: the gold answer.

    Returns:
        The score, a float in [0, 1].
    """
    if is_correct(output, target):
        return 1.0
    kind = _answer_kind(task, target)
    if kind == "option":
        return 0.1 if re.fullmatch(r"\([a-z]\)", normalize_output(output)) else 0.0
    if kind == "number":
        out, tgt = normalize_output(output).strip(), normalize_target(target)
        if _INT_RE.fullmatch(out) and _INT_RE.fullmatch(tgt):
            return 0.5 / (1.0 + abs(int(out) - int(tgt)))
        return 0.0
    return 0.9 * _word_list_credit(output, target)


def _word_list_credit(output: str, target: str) -> float:
    """Share of right positions and of right adjacent pairs, averaged; 1.0 for equal token lists."""
    out = output.lower().replace(".", "").split()
    tgt = target.lower().replace(".", "").split()
    if not out or not tgt:
        return 0.0
    positions = sum(o == t for o, t in zip(out, tgt)) / max(len(out), len(tgt))
    if len(tgt) < 2:
        return positions
    out_pairs = set(zip(out, out[1:]))
    pairs = sum(p in out_pairs for p in zip(tgt, tgt[1:])) / (len(tgt) - 1)
    return (positions + pairs) / 2


# --------------------------------------------------------------------------------------------------
# Prompt / response format
# --------------------------------------------------------------------------------------------------


def format_prompt(example: Example, template: str = "Q: {input}\nA:", **fields: str) -> str:
    """Fill a prompt template with the example's ``input`` (and any extra named fields).

    Args:
        example: the example.
        template: a ``str.format`` template; ``{input}`` is the question. Spec §5.1's HIR template is
            ``"{instruction}\\n\\nQ: {input}\\nA:"`` with ``instruction=...`` passed in ``fields``.
        **fields: values for other placeholders in ``template``.

    Returns:
        The prompt text.

    Raises:
        UserError: if the template names a placeholder that was not given.
    """
    try:
        return template.format(input=example.input, **fields)
    except (KeyError, IndexError) as err:
        raise UserError(
            f"prompt template {template!r} uses the placeholder {err}, which has no value; "
            f"available: {', '.join(['input', *fields])}"
        ) from None
    except ValueError as err:  # e.g. a lone "{"
        raise UserError(f"prompt template {template!r} is not a valid format string: {err}") from None


def format_response(example: Example) -> str:
    """The training response for an example: ``" " + target``.

    The leading space follows the ``"...\\nA:"`` prompt the way a human writes ``A: (B)``, so a
    model trained on prompt + response learns to answer ``" (B)"``; :func:`is_correct` drops spaces,
    so the space never makes an answer wrong.
    """
    return " " + example.target


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

Generator = Callable[..., Example]

TASKS: dict[str, Generator] = {}


def register_task(name: str, *, kind: str | None = None, overwrite: bool = False):
    """Decorator that registers a generator ``fn(rng: random.Random, **difficulty) -> Example``.

    The generator's keyword arguments (all with defaults) are its difficulty knobs; :func:`generate`
    checks user-supplied knobs against them.

    Args:
        name: the task name used in configs (``data.task=...``).
        kind: the answer kind for :func:`score` (``"option"``, ``"number"`` or ``"words"``); None
            infers it from each target's shape.
        overwrite: allow replacing an already registered task of the same name.

    Example:
        >>> @register_task("copy_word", kind="words")
        ... def copy_word(rng, n_letters=3):
        ...     w = "".join(rng.choice("abc") for _ in range(n_letters))
        ...     return Example(input=f"Copy: {w}", target=w)
    """
    if kind not in (None, "option", "number", "words"):
        raise ValueError(f"kind must be None, 'option', 'number' or 'words', got {kind!r}")

    def decorator(fn: Generator) -> Generator:
        if name in TASKS and not overwrite:
            raise UserError(f"task {name!r} is already registered; pass overwrite=True to replace it")
        TASKS[name] = fn
        if kind is None:
            _TASK_KINDS.pop(name, None)
        else:
            _TASK_KINDS[name] = kind
        return fn

    return decorator


def task_names() -> list[str]:
    """The registered task names, sorted."""
    return sorted(TASKS)


def _knobs(fn: Generator) -> list[str]:
    """The difficulty knob names of a generator: every parameter after the leading ``rng``."""
    return list(inspect.signature(fn).parameters)[1:]


def generate(task: str, n: int, seed: int, **difficulty) -> list[Example]:
    """Generate ``n`` examples of a registered task, deterministically for a given seed.

    Args:
        task: a registered task name (see :func:`task_names`).
        n: the number of examples.
        seed: the seed of the ``random.Random`` stream all examples are drawn from.
        **difficulty: the task's difficulty knobs (see the module docstring); omitted knobs keep
            their BBH-like defaults.

    Returns:
        ``n`` examples. Duplicates are possible when the knobs make the task very small.

    Raises:
        UserError: unknown task, unknown knob, or a knob value the generator rejects.
    """
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; known tasks: {', '.join(task_names())}")
    fn = TASKS[task]
    valid = _knobs(fn)
    unknown = sorted(set(difficulty) - set(valid))
    if unknown:
        raise UserError(
            f"unknown difficulty setting(s) {', '.join(map(repr, unknown))} for task {task!r}; "
            f"valid: {', '.join(valid) if valid else '(none)'}"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UserError(f"the number of examples must be a non-negative integer, got {n!r}")
    rng = random.Random(seed)
    return [fn(rng, **difficulty) for _ in range(n)]


# --------------------------------------------------------------------------------------------------
# Helpers shared by the generators
# --------------------------------------------------------------------------------------------------


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _check_int(name: str, value, lo: int, hi: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo
    ok = ok and (hi is None or value <= hi)
    _require(ok, f"{name} must be an integer in [{lo}, {hi if hi is not None else 'inf'}], got {value!r}")


def _check_prob(name: str, value) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
    _require(ok, f"{name} must be a probability in [0, 1], got {value!r}")


def _choose_subset(name: str, chosen: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Validate an optional subset knob (categories, variants, scenarios); None means all."""
    if chosen is None:
        return list(available)
    if isinstance(chosen, str):  # a lone name from the CLI, e.g. `variants=books`
        chosen = [chosen]
    chosen = list(chosen)
    bad = [c for c in chosen if c not in available]
    _require(
        bool(chosen) and not bad,
        f"{name} must be a non-empty subset of {list(available)}, got {chosen}",
    )
    return chosen


def _join(items: Sequence[str], pair_comma: bool = False) -> str:
    """English list with the Oxford comma: ``a, b, and c``.

    BBH object_counting writes two items as ``a car, and a toaster`` (``pair_comma=True``); the other
    tasks never list two items in BBH, and we write those the plain way (``Alice and Bob``).
    """
    items = list(items)
    if len(items) == 1:
        return items[0]
    if len(items) == 2 and not pair_comma:
        return f"{items[0]} and {items[1]}"
    return ", ".join(items[:-1]) + ", and " + items[-1]


_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
_ORDINALS = ["", "first", "second", "third", "fourth", "fifth", "sixth", "seventh"]


def _options(texts: Sequence[str]) -> str:
    return "Options:\n" + "\n".join(f"({_LETTERS[i]}) {t}" for i, t in enumerate(texts))


# --------------------------------------------------------------------------------------------------
# object_counting
# --------------------------------------------------------------------------------------------------

# (singular, plural) per category, from BBH (the question names the category).
_COUNTING: dict[str, list[tuple[str, str]]] = {
    "musical instruments": [
        ("piano", "pianos"), ("flute", "flutes"), ("trombone", "trombones"), ("violin", "violins"),
        ("accordion", "accordions"), ("clarinet", "clarinets"), ("drum", "drums"),
        ("trumpet", "trumpets"),
    ],
    "fruits": [
        ("apple", "apples"), ("banana", "bananas"), ("strawberry", "strawberries"),
        ("peach", "peaches"), ("orange", "oranges"), ("plum", "plums"),
        ("raspberry", "raspberries"), ("grape", "grapes"), ("nectarine", "nectarines"),
        ("blackberry", "blackberries"),
    ],
    "animals": [
        ("bear", "bears"), ("cat", "cats"), ("chicken", "chickens"), ("cow", "cows"), ("dog", "dogs"),
        ("donkey", "donkeys"), ("duck", "ducks"), ("fish", "fish"), ("frog", "frogs"),
        ("goat", "goats"), ("mouse", "mice"), ("pig", "pigs"), ("rabbit", "rabbits"),
        ("snail", "snails"), ("snake", "snakes"),
    ],
    "vegetables": [
        ("cabbage", "cabbages"), ("carrot", "carrots"), ("cauliflower", "cauliflowers"),
        ("garlic", "garlics"), ("head of broccoli", "heads of broccoli"),
        ("lettuce head", "lettuce heads"), ("onion", "onions"), ("potato", "potatoes"),
        ("stalk of celery", "stalks of celery"), ("yam", "yams"),
    ],
    "objects": [
        ("bed", "beds"), ("car", "cars"), ("chair", "chairs"), ("couch", "couches"),
        ("fridge", "fridges"), ("lamp", "lamps"), ("microwave", "microwaves"), ("oven", "ovens"),
        ("stove", "stoves"), ("table", "tables"), ("toaster", "toasters"),
    ],
}

# How often BBH writes each quantity 1..5 ("a"/"an", "two", ..., "five"): 1173, 160, 97, 52, 15
# entries out of 1497. Quantities above 5 (max_count > 5) continue the tail with weight 15.
_COUNT_WEIGHTS = [1173, 160, 97, 52, 15]


def _quantity_phrase(count: int, singular: str, plural: str) -> str:
    if count == 1:
        return ("an " if singular[0] in "aeiou" else "a ") + singular
    return f"{_NUMBER_WORDS[count]} {plural}"


@register_task("object_counting", kind="number")
def object_counting(
    rng: random.Random,
    min_items: int = 2,
    max_items: int = 10,
    max_count: int = 5,
    distractor_prob: float = 0.2,
    max_distractors: int = 3,
    categories: Sequence[str] | None = None,
) -> Example:
    """``I have a flute, two pianos, and a lamp. How many musical instruments do I have?`` -> ``3``.

    Args:
        rng: the random stream.
        min_items: fewest distinct kinds of the asked category in the list.
        max_items: most distinct kinds of the asked category (capped by the category's size, 8 for
            musical instruments, as BBH does).
        max_count: largest quantity of one kind (1 = every entry is "a"/"an"); at most 10.
        distractor_prob: chance that the list also holds items of one other category (BBH: ~18%).
        max_distractors: most distractor entries (each 1..max_distractors, uniformly).
        categories: the categories that may be asked about (default: all five).
    """
    asked_pool = _choose_subset("categories", categories, list(_COUNTING))
    _check_int("min_items", min_items, 1, min(len(_COUNTING[c]) for c in asked_pool))
    _check_int("max_items", max_items, min_items)
    _check_int("max_count", max_count, 1, 10)
    _check_prob("distractor_prob", distractor_prob)
    _check_int("max_distractors", max_distractors, 1)

    weights = (_COUNT_WEIGHTS + [15] * 5)[:max_count]
    counts = list(range(1, max_count + 1))
    category = rng.choice(asked_pool)
    kinds = _COUNTING[category]
    n_items = rng.randint(min_items, min(max_items, len(kinds)))
    entries, total = [], 0
    for singular, plural in rng.sample(kinds, n_items):
        count = rng.choices(counts, weights)[0]
        total += count
        entries.append(_quantity_phrase(count, singular, plural))
    if rng.random() < distractor_prob:
        # BBH's distractors all come from one other category (any of the five).
        other = rng.choice([c for c in _COUNTING if c != category])
        n_distract = rng.randint(1, min(max_distractors, len(_COUNTING[other])))
        for singular, plural in rng.sample(_COUNTING[other], n_distract):
            entries.append(_quantity_phrase(rng.choices(counts, weights)[0], singular, plural))
        rng.shuffle(entries)
    text = f"I have {_join(entries, pair_comma=True)}. How many {category} do I have?"
    return Example(input=text, target=str(total))


# --------------------------------------------------------------------------------------------------
# word_sorting
# --------------------------------------------------------------------------------------------------

# Our own list of common English words (lower-case letters only, no duplicates), alphabetical so it is
# easy to review. `vocab_size` takes an evenly spaced subset so small vocabularies still span the
# alphabet.
WORDS: tuple[str, ...] = tuple(
    """
    able about above accept across act add afraid after again age ago agree air alive allow almost
    alone along always among amount anger animal answer apple area arm army around arrive art ask
    aunt autumn awake baby back bad bag ball band bank base basket bath bean bear beat bed bell belt
    bench berry bird birth black blade blanket block blood blow blue board boat body bone book border
    bottle bowl box brain branch brave bread breath brick bridge bright bring broad brother brown
    brush bucket build burn butter button cable cake calm camera camp candle canvas card care carpet
    carry castle cattle cave chain chalk chance change cheap cheese cherry chest chief child circle
    city claim class clean clear climb clock cloth cloud coast coat coffee coin cold color comb
    common cook copper corn corner cotton cough count country cousin cover crack crane cream crowd
    crown cup curtain curve cushion damage dance danger dark daughter deep desert desk dinner dirt
    doctor door double dozen dragon drawer dream dress drink drop drum dust eager eagle early earth
    east edge egg elbow empty engine enjoy equal escape evening event exact expert eye face fact
    fair fall family farm father feather fence fever field finger fire flag flame flight floor
    flower fog folk food foot forest fork frame friend frost fruit funny garden gate gentle ghost
    gift girl glass glove gold grain grass gravel green ground group guard guide habit hair hammer
    hand happy harbor hat heart heavy hill history hobby hole honey hook horse hotel hour house
    humor hunger ice idea inch ink insect iron island jacket jelly jewel job joke journey judge
    juice jump kettle key kind king kitchen kite knee knife knot ladder lake lamp language laugh
    lawn leaf lemon letter level library light lily line linen lion liquid list little lizard loud
    lucky lunch machine magic map marble market meadow medal melon metal middle milk mind minute
    mirror money month moon morning mother motion mountain mouth music nail narrow nation needle
    nest net night noble noise north nose number ocean offer oil olive onion orange orbit oven owner
    paint paper parcel party paste path peace pearl pencil pepper piano picture pillow pilot pipe
    planet plate pocket poem point polish pond powder prize pumpkin puzzle queen question quiet
    rabbit rain rainbow range reason record ribbon rice river road rock roof root rope rose round
    rubber ruler saddle sail salt sand school science scissors season seed shadow sheep shelf shell
    shirt shoe shop silver sister sky sleep smile smoke snake snow soap sock soft song soup south
    spark spice spoon spring square stable stage stamp star station steam stick stone storm story
    street string sugar summer sun supper swim table tail teacher thread thunder ticket tiger timber
    toast tomato tongue tooth towel tower town toy trade train tree truck tunnel turtle umbrella
    uncle valley velvet village violin visit voice wagon wall water wave weather wheel whistle wind
    window winter wire wolf wood wool world yard year yellow young zebra zero
    """.split()
)


@register_task("word_sorting", kind="words")
def word_sorting(
    rng: random.Random,
    min_words: int = 2,
    max_words: int = 20,
    vocab_size: int | None = None,
) -> Example:
    """``Sort the following words alphabetically: List: pear apple`` -> ``apple pear``.

    Args:
        rng: the random stream.
        min_words: fewest words in the list (BBH: 2).
        max_words: most words in the list (BBH: 20); the count is uniform in between, like BBH.
        vocab_size: draw from this many words of :data:`WORDS` (an evenly spaced subset); None = all.
    """
    _check_int("min_words", min_words, 1)
    _check_int("max_words", max_words, min_words)
    size = len(WORDS) if vocab_size is None else vocab_size
    _check_int("vocab_size", size, max_words, len(WORDS))
    vocab = [WORDS[i * len(WORDS) // size] for i in range(size)]
    words = rng.sample(vocab, rng.randint(min_words, max_words))  # distinct words, as in BBH
    return Example(
        input="Sort the following words alphabetically: List: " + " ".join(words),
        target=" ".join(sorted(words)),
    )


# --------------------------------------------------------------------------------------------------
# tracking_shuffled_objects_*
# --------------------------------------------------------------------------------------------------

_PEOPLE = ["Alice", "Bob", "Claire", "Dave", "Eve", "Fred", "Gertrude"]

# The five BBH story variants. "{names}" / "{assign}" / "{swaps}" / "{who}" are filled per example;
# `assign` is how one person's item is written, `swap` how one swap is written, `ask` ends the question.
# Item lists are BBH's, quirks included (the gift list holds some balls, and BBH writes "a orange ball").
_TRACKING: dict[str, dict] = {
    "books": {
        "intro": "{names} are friends and avid readers who occasionally trade books. At the start of the "
        "semester, they each buy one new book: {assign}.\nAs the semester proceeds, they start trading "
        "around the new books.",
        "assign": "{person} gets {item}",
        "swap": "{a} and {b} swap books.",
        "ask": "At the end of the semester, {who} has",
        "items": ["Ulysses", "Frankenstein", "Lolita", "Hound of the Baskervilles", "The Odyssey",
                  "Catch-22", "Moby Dick", "The Great Gatsby", "The Fellowship of the Ring", "The Pearl"],
    },
    "dance": {
        "intro": "{names} are dancers at a square dance. At the start of a song, they each have a partner: "
        "{assign}.\nThroughout the song, the dancers often trade partners.",
        "assign": "{person} is dancing with {item}",
        "swap": "{a} and {b} switch partners.",
        "ask": "At the end of the dance, {who} is dancing with",
        "items": ["Helga", "Lola", "Ophelia", "Izzi", "Melissa", "Karl", "Rodrigo", "Jamie", "Patrick",
                  "Sam"],
    },
    "ball": {
        "intro": "{names} are playing a game. At the start of the game, they are each holding a ball: "
        "{assign}.\nAs the game progresses, pairs of players trade balls.",
        "assign": "{person} has a {item}",
        "swap": "{a} and {b} swap balls.",
        "ask": "At the end of the game, {who} has the",
        "items": ["brown ball", "red ball", "white ball", "yellow ball", "green ball", "orange ball",
                  "blue ball", "purple ball", "pink ball", "black ball"],
    },
    "gift": {
        "intro": "{names} are holding a white elephant gift exchange. At the start of the event, they are "
        "each holding a present of a different color: {assign}.\nAs the event progresses, pairs of "
        "people swap gifts.",
        "assign": "{person} has a {item}",
        "swap": "{a} and {b} swap their gifts.",
        "ask": "At the end of the event, {who} has the",
        "items": ["red present", "black ball", "white present", "orange ball", "purple present",
                  "pink ball", "blue present", "yellow present", "green present", "brown present"],
    },
    "soccer": {
        "intro": "{names} are on the same team in a soccer match. At the start of the match, they are each "
        "assigned to a position: {assign}.\nAs the game progresses, pairs of players occasionally swap "
        "positions.",
        "assign": "{person} is playing {item}",
        "swap": "{a} and {b} trade positions.",
        "ask": "At the end of the match, {who} is playing",
        "items": ["goalkeeper", "left winger", "center midfielder", "cheerleader", "right winger",
                  "benchwarmer", "right midfielder", "striker", "fullback", "left midfielder"],
    },
}


def _swap_word(i: int, n: int) -> str:
    """BBH's sequencing words: First, Then, ..., Finally (a lone swap is just "First")."""
    if i == 0:
        return "First"
    return "Finally" if i == n - 1 else "Then"


def tracking_shuffled_objects(
    rng: random.Random,
    n_objects: int = 3,
    n_swaps: int | None = None,
    variants: Sequence[str] | None = None,
) -> Example:
    """People swap items in turn; which item does one of them hold at the end? Target ``"(A)"``.

    Options list the items in the order they were first handed out (as in BBH), so the answer is
    found by replaying the swaps.

    Args:
        rng: the random stream.
        n_objects: people (and items), 2..7 (BBH: 3, 5 or 7).
        n_swaps: swaps to replay; None = n_objects (as in BBH). 0 makes it a lookup. Consecutive
            swaps never repeat the same pair (BBH never undoes a swap right away).
        variants: story variants to draw from (default all of books, dance, ball, gift, soccer).
    """
    _check_int("n_objects", n_objects, 2, len(_PEOPLE))
    swaps_n = n_objects if n_swaps is None else n_swaps
    _check_int("n_swaps", swaps_n, 0)
    story = _TRACKING[rng.choice(_choose_subset("variants", variants, list(_TRACKING)))]

    people = _PEOPLE[:n_objects]
    items = rng.sample(story["items"], n_objects)
    holder = dict(zip(people, items))
    swaps: list[tuple[str, str]] = []
    for i in range(swaps_n):
        while True:
            a, b = rng.sample(people, 2)
            if not swaps or {a, b} != set(swaps[-1]) or n_objects == 2:
                break
        swaps.append((a, b))
        holder[a], holder[b] = holder[b], holder[a]
    who = rng.choice(people)

    assign = _join([story["assign"].format(person=p, item=it) for p, it in zip(people, items)])
    swap_text = " ".join(
        f"{_swap_word(i, swaps_n)}, " + story["swap"].format(a=a, b=b) for i, (a, b) in enumerate(swaps)
    )
    text = " ".join(
        part
        for part in (
            story["intro"].format(names=_join(people), assign=assign),
            swap_text,
            story["ask"].format(who=who),
        )
        if part
    )
    text += "\n" + _options(items)
    return Example(input=text, target=f"({_LETTERS[items.index(holder[who])]})")


# --------------------------------------------------------------------------------------------------
# logical_deduction_*
# --------------------------------------------------------------------------------------------------

# Each scenario orders its objects along one axis; position 0 is the "low" end (left, oldest,
# cheapest, finished first). `ref` turns a listed item into the noun used in statements.
_DEDUCTION: dict[str, dict] = {
    "birds": {
        "intro": "On a branch, there are {n} birds: {items}.",
        "items": ["a blue jay", "a quail", "a falcon", "a robin", "a crow", "a hummingbird", "a raven",
                  "a hawk", "an owl", "a cardinal"],
        "axis": "left_right",
    },
    "books": {
        "intro": "On a shelf, there are {n} books: {items}.",
        "items": ["a blue book", "an orange book", "a red book", "a green book", "a yellow book",
                  "a gray book", "a purple book", "a black book", "a brown book", "a white book"],
        "axis": "left_right",
    },
    "vehicles": {
        "intro": "In an antique car show, there are {n} vehicles: {items}.",
        # "motorcyle" is BBH's spelling; keeping it keeps generated text in the real files' vocabulary.
        "items": ["a motorcyle", "a limousine", "a convertible", "a tractor", "a truck", "a minivan",
                  "a station wagon", "a bus", "a sedan", "a hatchback"],
        "axis": "age",
    },
    "fruits": {
        "intro": "A fruit stand sells {n} fruits: {items}.",
        "items": ["apples", "peaches", "mangoes", "loquats", "watermelons", "cantaloupes", "kiwis",
                  "plums", "pears", "oranges"],
        "axis": "price",
    },
    "golfers": {
        "intro": "In a golf tournament, there were {n} golfers: {items}.",
        "items": ["Eve", "Rob", "Mel", "Ada", "Mya", "Ana", "Joe", "Amy", "Eli", "Dan"],
        "axis": "rank",
    },
}

_DEDUCTION_HEADER = (
    "The following paragraphs each describe a set of {n} objects arranged in a fixed order. "
    "The statements are logically consistent within each paragraph. "
)


def _position_phrase(axis: str, pos: int, n: int) -> str:
    """BBH's name for position ``pos`` (0 = low end) of ``n``, e.g. "second from the left".

    BBH counts the first half from one end and the rest from the other; the middle object of an odd
    count is named from the left / first end for positions and golf, but from the newest / most
    expensive end for age and price (three vehicles: oldest, second-newest, newest).
    """
    from_low = pos <= (n - 1) // 2 if axis in ("left_right", "rank") else pos < n // 2
    k = pos + 1 if from_low else n - pos  # 1-based, counted from the chosen end
    if axis == "left_right":
        end = "left" if from_low else "right"
        return f"{end}most" if k == 1 else f"{_ORDINALS[k]} from the {end}"
    if axis == "age":
        end = "oldest" if from_low else "newest"
        return end if k == 1 else f"{_ORDINALS[k]}-{end}"
    if axis == "price":
        end = "cheapest" if from_low else "most expensive"
        return end if k == 1 else f"{_ORDINALS[k]}-{end}"
    if from_low:  # rank
        return _ORDINALS[k]
    return "last" if k == 1 else f"{_ORDINALS[k]}-to-last"


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def _absolute_statement(axis: str, ref: str, pos: int, n: int) -> str:
    """``ref`` is at position ``pos``: "The quail is the leftmost", "Eve finished second"."""
    phrase = _position_phrase(axis, pos, n)
    if axis == "rank":
        return _sentence(f"{ref} finished {phrase}")
    verb = "are" if axis == "price" else "is"
    return _sentence(f"{ref} {verb} the {phrase}")


def _comparison(axis: str, a_ref: str, b_ref: str, a_lower: bool) -> str:
    """``a`` compared to ``b``; ``a_lower`` = a sits nearer the low end (left/older/cheaper/above)."""
    if axis == "left_right":
        text = f"{a_ref} is to the {'left' if a_lower else 'right'} of {b_ref}"
    elif axis == "age":
        text = f"{a_ref} is {'older' if a_lower else 'newer'} than {b_ref}"
    elif axis == "price":
        text = f"{a_ref} are {'less' if a_lower else 'more'} expensive than {b_ref}"
    else:
        text = f"{a_ref} finished {'above' if a_lower else 'below'} {b_ref}"
    return _sentence(text)


def _ref(item: str) -> str:
    """How statements name a listed item: "a blue jay" -> "the blue jay", "apples" -> "the apples"."""
    if item[0].isupper():  # golfers are names
        return item
    return "the " + re.sub(r"^(a|an) ", "", item)


@functools.cache
def _orders(n: int) -> np.ndarray:
    """All orders of n objects, ``[n!, n]`` int array: row r, column obj = position of obj."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.int8).reshape(-1, n)


def logical_deduction(
    rng: random.Random,
    n_objects: int = 3,
    absolute_prob: float = 0.25,
    scenarios: Sequence[str] | None = None,
) -> Example:
    """Objects in a hidden order, clues about it, and "which one is in position k?". Target ``"(B)"``.

    A random order is drawn; true clues (a comparison of two objects, or with ``absolute_prob`` one
    object's exact position) are added while they rule out orders, until exactly one order is left;
    clues that became redundant are then dropped, so the paragraph is minimal, like BBH's
    (n_objects - 1 statements in most cases).

    Args:
        rng: the random stream.
        n_objects: objects to order, 2..7 (BBH: 3, 5 or 7).
        absolute_prob: chance that a drawn clue states a position rather than compares two objects
            (BBH three objects: 124 of 500 statements).
        scenarios: story variants (default all of birds, books, vehicles, fruits, golfers).
    """
    _check_int("n_objects", n_objects, 2, 7)
    _check_prob("absolute_prob", absolute_prob)
    scene = _DEDUCTION[rng.choice(_choose_subset("scenarios", scenarios, list(_DEDUCTION)))]
    axis = scene["axis"]

    items = rng.sample(scene["items"], n_objects)  # listing order = option order
    order = list(range(n_objects))
    rng.shuffle(order)
    pos = {obj: p for p, obj in enumerate(order)}  # object index -> position on the axis

    # A clue is (kind, a, b): kind "abs" says object a is at its true position, "cmp" says a and b
    # are in their true relative order. Each clue is checked at once against every candidate order
    # (rows of `cands`: object index -> position), which keeps seven objects (5040 orders) fast.
    cands = _orders(n_objects)

    def satisfied(clue: tuple[str, int, int]) -> np.ndarray:
        kind, a, b = clue
        if kind == "abs":
            return cands[:, a] == pos[a]
        return (cands[:, a] < cands[:, b]) == (pos[a] < pos[b])

    clues: list[tuple[str, int, int]] = []
    masks: list[np.ndarray] = []
    alive = np.ones(len(cands), dtype=bool)
    while alive.sum() > 1:
        if rng.random() < absolute_prob:
            clue = ("abs", rng.randrange(n_objects), -1)
        else:
            a, b = rng.sample(range(n_objects), 2)
            clue = ("cmp", a, b)
        mask = satisfied(clue)
        if (alive & mask).sum() < alive.sum():  # keep only clues that rule something out
            clues.append(clue)
            masks.append(mask)
            alive &= mask
    i = 0
    while i < len(clues):  # then drop clues the others already imply, so no statement is redundant
        rest = masks[:i] + masks[i + 1 :]
        if rest and np.logical_and.reduce(rest).sum() == 1:
            del clues[i], masks[i]
        else:
            i += 1

    refs = [_ref(it) for it in items]
    statements = []
    for kind, a, b in clues:
        if kind == "abs":
            statements.append(_absolute_statement(axis, refs[a], pos[a], n_objects))
        else:
            statements.append(_comparison(axis, refs[a], refs[b], pos[a] < pos[b]))

    asked = rng.randrange(n_objects)  # the position the question is about
    options = [_absolute_statement(axis, r, asked, n_objects) for r in refs]
    n_word = _NUMBER_WORDS[n_objects]
    text = (
        _DEDUCTION_HEADER.format(n=n_word)
        + scene["intro"].format(n=n_word, items=_join(items))
        + "".join(f" {s}." for s in statements)
        + "\n"
        + _options(options)
    )
    return Example(input=text, target=f"({_LETTERS[order[asked]]})")


def _register_sized(family: Callable[..., Example], prefix: str, kind: str) -> None:
    """Register ``<prefix>_{three,five,seven}_objects``: the same generator with BBH's sizes."""
    for size in (3, 5, 7):

        def sized(rng: random.Random, n_objects: int = size, **difficulty) -> Example:
            return family(rng, n_objects=n_objects, **difficulty)

        # Expose the family's real knobs (with this size's default) so `generate` can validate them.
        signature = inspect.signature(family)
        params = list(signature.parameters.values())
        params[1] = params[1].replace(default=size)
        sized.__signature__ = signature.replace(parameters=params)
        sized.__name__ = f"{prefix}_{_NUMBER_WORDS[size]}_objects"
        sized.__doc__ = family.__doc__
        register_task(sized.__name__, kind=kind)(sized)


_register_sized(tracking_shuffled_objects, "tracking_shuffled_objects", "option")
_register_sized(logical_deduction, "logical_deduction", "option")
