"""Make docs/labeling.png: the labeling page in headless Chromium, half-way through ranking an item.

    python -m tests.label.screenshot docs/labeling.png

The item is written by hand (a tiny random policy's samples are unreadable bytes); the page, the
server and the browser are the real ones the end-to-end tests drive.
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


def main(out: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        make_campaign(Path(tmp) / "c", [ITEM], mode="rank", likert=True, flags=["harmful", "fails_instruction"],
                      instructions="Rank the answers by correctness (1 = best; equal ranks for a tie), rate "
                                   "each 1-7, and flag problems.")
        store = open_campaign(Path(tmp) / "c")
        token = store.add_labeler("ada")
        server = Server(Path(tmp) / "c").start()
        driver = chromium_driver(Path(tmp))
        try:
            driver.set_window_size(1280, 860)
            sign_in(driver, server, token)
            keys(driver, "4", "1", "3", "1", "shift+2", "w", "j", "shift+7", "j", "shift+4")
            wait(driver, lambda d: by_id(d, "draft-status").text == "Draft saved")
            assert len(cards(driver)) == 4
            driver.save_screenshot(out)
        finally:
            driver.quit()
            server.stop()
            store.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/labeling.png")
