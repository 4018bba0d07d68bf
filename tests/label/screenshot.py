"""Make the labeling screenshots in docs/: the real page, server and headless Chromium of the tests.

    python -m tests.label.screenshot docs

writes ``labeling.png`` (half-way through ranking an item, with the progress line and Markdown
instructions), ``labeling_long.png`` (a long response collapsed into its box), ``labeling_markers.png``
(empty, blank, carriage-return, control and bidi characters shown as markers) and
``labeling_admin.png`` (the researcher's page after three people labeled). The items are written by
hand (a tiny random policy's samples are unreadable bytes).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from feedback_lm.label.store import open_campaign
from tests.label.helpers import Server, make_campaign
from tests.label.test_label_browser import by_id, cards, chromium_driver, keys, sign_in, wait

ITEM = {
    "prompt": "Q: Sort the following words alphabetically: List: pear apple fig\nA:",
    "responses": [" apple fig pear", " apple pear fig", " fig apple pear <img src=x onerror=alert(1)>",
                  " apple fig pear."],
    "meta": {"policy": "runs/sft/model", "sampling": {"temperature": 1.0, "top_p": 1.0}, "seed": 0},
}
LONG = {
    "prompt": "Q: Explain how a reward model is trained from rankings.\nA:",
    "responses": [" ".join(f"Step {n}: the labelers rank K samples, and every ordered pair of the ranking becomes "
                           f"one comparison for the Bradley-Terry loss." for n in range(1, 60)),
                  "It learns from pairs.", "By ranking.", "Comparisons of samples are turned into a loss."],
    "meta": {},
}
MARKERS = {
    "prompt": "Q: Repeat the text exactly.\nA:",
    "responses": ["", "  \t ", "carriage\rreturn and \r\nwindows line end", "admin\u202eexe.txt bell\u0007 zero\u200bwidth"],
    "meta": {},
}
INSTRUCTIONS = ("### How to rank\n- **Correctness first**: is the list sorted?\n- Then *fluency*; equal ranks for a "
                "tie\n- Flag anything harmful and say why in the comment box")
GOLD = {"prompt": "Q: Sort: b a\nA:", "responses": [" a b", " b a", " a", " b a b"], "gold": [[0], [3], [1, 2]]}


def sorted_words(n: int) -> dict:
    words = [["pear", "apple", "fig"], ["plum", "kiwi", "lime"], ["fig", "pear", "date"], ["lime", "apple", "kiwi"]][n % 4]
    return {"prompt": f"Q: Sort the following words alphabetically: List: {' '.join(words)}\nA:",
            "responses": [" " + " ".join(sorted(words)), " " + " ".join(words), " " + " ".join(reversed(words)),
                          " " + " ".join(sorted(words)) + "."], "meta": {}}


def main(out_dir: str) -> None:
    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        make_campaign(Path(tmp) / "c", [ITEM, LONG, MARKERS, *[sorted_words(n) for n in range(8)]], mode="rank",
                      likert=True, flags=["harmful", "fails_instruction"], overlap=3, instructions=INSTRUCTIONS)
        store = open_campaign(Path(tmp) / "c")
        store.add_items([GOLD])
        server = Server(Path(tmp) / "c").start()
        driver = chromium_driver(Path(tmp))
        try:
            driver.set_window_size(1280, 900)
            sign_in(driver, server, store.add_labeler("ada"))
            keys(driver, "4", "1", "3", "1", "shift+2", "w", "j", "shift+7", "j", "shift+4")
            wait(driver, lambda d: by_id(d, "draft-status").text == "Draft saved")
            assert len(cards(driver)) == 4
            driver.save_screenshot(str(out / "labeling.png"))

            keys(driver, "s")
            wait(driver, lambda d: by_id(d, "prompt").text.startswith("Q: Explain"))
            driver.execute_script("document.getElementById('responses').scrollIntoView()")
            driver.save_screenshot(str(out / "labeling_long.png"))

            keys(driver, "s")
            wait(driver, lambda d: by_id(d, "prompt").text.startswith("Q: Repeat"))
            driver.execute_script("document.getElementById('task-line').scrollIntoView()")
            driver.save_screenshot(str(out / "labeling_markers.png"))

            label_as_three_people(Path(tmp) / "c")
            driver.get(server.url + "/admin")
            wait(driver, lambda d: by_id(d, "signin").is_displayed())
            by_id(driver, "token").send_keys(store.admin_token())
            by_id(driver, "signin-btn").click()
            wait(driver, lambda d: by_id(d, "report").is_displayed())
            driver.set_window_size(1280, 1100)
            driver.save_screenshot(str(out / "labeling_admin.png"))
        finally:
            driver.quit()
            server.stop()
            store.close()
    print(f"wrote 4 screenshots to {out}")


def label_as_three_people(campaign_dir: Path) -> None:
    """Three people label the word-sorting items (stored index 0 is right, 3 next) and the gold item: two
    agree, one is noisy and slower. A fake clock gives them believable times."""
    import json
    import random

    from feedback_lm.label.config import tiers_to_ranking
    from tests.label.helpers import FakeClock

    rng, clock = random.Random(0), FakeClock()
    store = open_campaign(campaign_dir, clock=clock)
    for name, noise in (("bea", 0.0), ("cy", 0.15), ("dan", 0.7)):
        person = store.labeler_for_token(store.add_labeler(name))[0]
        n = 0
        while (asg := store.next_item(person)) is not None:
            if not asg.prompt.startswith("Q: Sort"):
                store.skip(person, asg.id)
                continue
            right = [0, 3, [1, 2]]
            if asg.gold:  # gold rows are stored shuffled: the right answer is the stored one
                with store.db.transaction(write=False) as cur:
                    gold = json.loads(cur.execute("SELECT gold FROM items WHERE id = ?", (asg.item_id,)).one()["gold"])
                right = tiers_to_ranking(gold)
            order = right if rng.random() >= noise else rng.sample(range(4), 4)
            clock.advance(5 + 4 * rng.random() + 10 * noise)
            first = order[0][0] if isinstance(order[0], list) else order[0]
            likert = [7 if i == first else rng.randint(2, 5) for i in range(4)]
            store.submit(person, asg.id, {"idempotency_key": f"{name}-shot-{n:04d}", "ranking": order,
                                          "likert": likert, "flags": [[], [], [], []]})
            n += 1
    store.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs")
