"""End to end in headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

One browser for the module and one real server per store (SQLite, then PostgreSQL); each test runs on
both, and signs in as a new person, so every test
starts at item 1, which holds model output that tries to run script. Item 2 holds characters that
hide or rearrange text, item 3 a 9 kB response; a test reaches them by skipping (``s``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from feedback_lm.label.store import open_campaign
from tests.label.helpers import PG_URL, Server, items, make_campaign, need_service, reset_postgres

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
EVIL = {
    "prompt": "Say hi <b>in bold</b>",
    "responses": ["<script>window.__pwned = 1; alert(1)</script>",
                  '<img src=x onerror="window.__pwned = 2; alert(2)">',
                  "plain & simple", "line one\nline two"],
    "meta": {"policy": "hand-written"},
}
SPECIAL = {
    "prompt": "Markers: left\u202eright",
    "responses": ["", "   \n", "one\rtwo\r\nthree", "bell\u0007 rlo\u202eabc\u202c zw\u200bsp"],
    "meta": {"policy": "hand-written"},
}
LONG = {"prompt": "A long one", "responses": ["word " * 1800, "short", "also short", "tiny"], "meta": {}}
INSTRUCTIONS = ("# Guidelines\n- Prefer **correct** answers\n- See [the guide](https://example.org/guide) and "
                "[this](javascript:alert(1))\n\n<img src=x onerror=alert(3)> stays text")


def chromium_driver(tmp_path: Path):
    """A headless Chromium from Debian's packages (never a downloaded browser)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        need_service(False, "selenium is not installed: pip install '.[test]'")
    need_service(CHROMIUM.exists() and CHROMEDRIVER.exists(),
                 "no /usr/bin/chromium or /usr/bin/chromedriver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chromium")
    driver = chromium_driver(tmp)
    yield driver
    driver.quit()
    shutil.rmtree(tmp / "chromium-profile", ignore_errors=True)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def site(request, browser, tmp_path_factory):
    db = None
    if request.param == "postgres":
        need_service(bool(PG_URL), "no PostgreSQL server: run `eval $(.ci/start_postgres.sh)` to start one "
                                   "and export FEEDBACK_LM_TEST_PG_URL")
        reset_postgres(PG_URL)
        db = PG_URL
    tmp = tmp_path_factory.mktemp(f"site-{request.param}")
    # The hostile item is item 1; overlap 10 gives it to every person first.
    make_campaign(tmp / "c", [EVIL, SPECIAL, LONG, *items(4)], db=db, mode="rank", likert=True,
                  flags=["harmful", "fails_instruction"], overlap=10, instructions=INSTRUCTIONS)
    store = open_campaign(tmp / "c")
    server = Server(tmp / "c").start()
    yield browser, server, store
    server.stop()
    store.close()


def wait(driver, condition, timeout: float = 60):  # generous: a loaded 2-core CI box starts Chromium slowly
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout).until(condition)
    except TimeoutException:
        shown = driver.execute_script(
            "return ['signin-error', 'status', 'draft-status'].map((id) => document.getElementById(id))"
            ".filter(Boolean).map((e) => e.id + ': ' + e.textContent).join(' | ') + ' | visible: '"
            " + ['signin', 'work', 'done', 'report'].filter((id) => document.getElementById(id)"
            " && !document.getElementById(id).hidden).join(',')"
            " + (typeof state === 'object' ? ' | busy: ' + state.busy + ', item: ' + Boolean(state.item) : '')")
        raise TimeoutException(f"waited {timeout} s; the page says: {shown}") from None


def by_id(driver, name: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, name)


def sign_out_everyone(driver, server, page: str = "/") -> None:
    """Forget the tab's token, then open ``page``. The token is cleared from a page without the app's
    script (the same origin): on the app's page, a sign-in still on its way could store it again."""
    driver.get(server.url + "/static/style.css")
    driver.execute_script("sessionStorage.clear()")
    driver.get(server.url + page)


def sign_in(driver, server, token: str) -> None:
    sign_out_everyone(driver, server)
    wait(driver, lambda d: by_id(d, "signin").is_displayed())
    by_id(driver, "token").send_keys(token)
    by_id(driver, "signin-btn").click()
    wait(driver, lambda d: by_id(d, "work").is_displayed())


def cards(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#responses .card")


def keys(driver, *sequence) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    chain = ActionChains(driver)
    for key in sequence:
        if key.startswith("shift+"):
            chain.key_down(Keys.SHIFT).send_keys(key[-1]).key_up(Keys.SHIFT)
        else:
            chain.send_keys(Keys.ENTER if key == "enter" else key)
    chain.perform()


def test_sign_in_is_required(site):
    driver, server, store = site
    sign_out_everyone(driver, server)
    wait(driver, lambda d: by_id(d, "signin").is_displayed())
    assert not by_id(driver, "work").is_displayed()
    by_id(driver, "token").send_keys("not-a-token")
    by_id(driver, "signin-btn").click()
    wait(driver, lambda d: by_id(d, "signin-error").text)
    assert by_id(driver, "signin-error").text == "That token is not valid."
    assert not by_id(driver, "work").is_displayed() and store.counts()["active_leases"] == 0


def test_model_output_renders_as_text_and_runs_no_script(site):
    from selenium.webdriver.common.by import By

    driver, server, store = site
    sign_in(driver, server, store.add_labeler("xss-checker"))
    shown = [c.find_element(By.CSS_SELECTOR, ".response-text").text for c in cards(driver)]
    assert sorted(shown) == sorted(EVIL["responses"])  # the markup is shown, as text
    assert by_id(driver, "prompt").text == EVIL["prompt"]
    assert driver.find_elements(By.CSS_SELECTOR, "#responses img, #responses script, #prompt b") == []
    assert driver.execute_script("return window.__pwned === undefined")
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018


def test_buttons_refresh_restores_choice_then_keyboard_labels(site):
    from selenium.webdriver.common.by import By

    driver, server, store = site
    name = "keyboard-person"
    sign_in(driver, server, store.add_labeler(name))
    first = cards(driver)[0]
    first.find_elements(By.CSS_SELECTOR, "button.rank")[0].click()       # rank 1 for response A
    cards(driver)[1].find_elements(By.CSS_SELECTOR, "button.flag")[1].click()  # B fails the instruction
    wait(driver, lambda d: by_id(d, "draft-status").text == "Draft saved")
    prompt = by_id(driver, "prompt").text

    driver.refresh()  # the unsaved choice comes back with the same item
    wait(driver, lambda d: by_id(d, "work").is_displayed() and len(cards(d)) == 4)
    assert by_id(driver, "prompt").text == prompt
    assert cards(driver)[0].find_elements(By.CSS_SELECTOR, "button.rank")[0].get_attribute("aria-pressed") == "true"
    assert cards(driver)[1].find_elements(By.CSS_SELECTOR, "button.flag")[1].get_attribute("aria-pressed") == "true"
    assert by_id(driver, "submit").get_attribute("disabled")  # not complete yet

    assert driver.find_elements(By.CSS_SELECTOR, "[data-index]") == []  # no stored index on the page
    # Ranks by keyboard (focus starts on A and moves on): A=1, B=2, C=2 (a tie), D=4; then quality
    # ratings with Shift+digit, flag 1 (q) on D, and Enter to submit.
    keys(driver, "1", "2", "2", "4", "shift+7", "j", "shift+6", "j", "shift+5", "j", "shift+4", "q")
    wait(driver, lambda d: not by_id(d, "submit").get_attribute("disabled"))
    keys(driver, "enter")
    wait(driver, lambda d: by_id(d, "prompt").text != prompt and by_id(d, "status").text == "Saved.")

    (row,) = [r for r in store.labeled_rows() if r["labeler"] == name]
    order = row["display_order"]  # kept on the server: display position -> stored index
    assert row["tiers"] == [[order[0]], sorted([order[1], order[2]]), [order[3]]]
    likert = dict(zip(order, [7, 6, 5, 4]))
    assert row["likert"] == [likert[i] for i in range(4)]
    flags = {order[1]: ["fails_instruction"], order[3]: ["harmful"]}
    assert row["flags"] == [flags.get(i, []) for i in range(4)]


def test_double_clicked_submit_stores_one_label(site):
    from selenium.webdriver.common.action_chains import ActionChains

    driver, server, store = site
    name = "double-clicker"
    sign_in(driver, server, store.add_labeler(name))
    prompt = by_id(driver, "prompt").text
    keys(driver, "4", "3", "2", "1", "shift+1", "j", "shift+2", "j", "shift+3", "j", "shift+4")
    wait(driver, lambda d: not by_id(d, "submit").get_attribute("disabled"))
    ActionChains(driver).double_click(by_id(driver, "submit")).perform()
    wait(driver, lambda d: by_id(d, "prompt").text != prompt)
    assert by_id(driver, "status").text == "Saved."
    assert len([r for r in store.labeled_rows() if r["labeler"] == name]) == 1


@pytest.mark.slow  # a second server (a few seconds)
def test_best_of_k_mode_with_buttons(site, tmp_path):
    from selenium.webdriver.common.by import By

    driver, _, _ = site
    make_campaign(tmp_path / "best", items(2), mode="best")  # no Likert, no flags
    store = open_campaign(tmp_path / "best")
    server = Server(tmp_path / "best").start()
    try:
        sign_in(driver, server, store.add_labeler("picker"))
        assert by_id(driver, "task-line").text == "Pick the best of the 4 responses"
        assert driver.find_elements(By.CSS_SELECTOR, "button.rank, button.likert, button.flag") == []
        prompt = by_id(driver, "prompt").text
        chosen = cards(driver)[2]
        chosen.find_element(By.CSS_SELECTOR, "button.best").click()
        wait(driver, lambda d: not by_id(d, "submit").get_attribute("disabled"))
        by_id(driver, "submit").click()
        wait(driver, lambda d: by_id(d, "prompt").text != prompt)
        (row,) = store.export_labeled()
        assert row.best == row.meta["display_order"][2] and row.meta["likert"] is None and row.meta["flags"] == [[], [], [], []]
    finally:
        server.stop()
        store.close()


def label_everything(driver) -> None:
    """Rank A..D 1..4 and rate each, by keyboard (focus starts on A)."""
    keys(driver, "1", "2", "3", "4", "shift+5", "j", "shift+5", "j", "shift+5", "j", "shift+5")
    wait(driver, lambda d: not by_id(d, "submit").get_attribute("disabled"))


def pressed_ranks(driver) -> list:
    from selenium.webdriver.common.by import By

    return [[b.text for b in c.find_elements(By.CSS_SELECTOR, "button.rank") if b.get_attribute("aria-pressed") == "true"]
            for c in cards(driver)]


def test_keys_typed_during_a_submit_are_kept(site):
    """Enter, then 2 2 at once: the ranks land on the next item (they were lost while the submit ran)."""
    driver, server, store = site
    sign_in(driver, server, store.add_labeler("fast-typist"))
    label_everything(driver)
    driver.execute_script("""  // every submit answers 1.5 s late
        const realFetch = window.fetch;
        window.fetch = (url, init) => (init && init.method === "POST" && url.endsWith("/label"))
            ? new Promise((ok) => setTimeout(() => ok(realFetch(url, init)), 1500)) : realFetch(url, init);""")
    keys(driver, "enter", "2", "2")
    wait(driver, lambda d: by_id(d, "prompt").text.startswith("Markers"))
    wait(driver, lambda d: pressed_ranks(d)[:2] == [["2"], ["2"]])
    assert pressed_ranks(driver)[2:] == [[], []]
    driver.refresh()  # the queued keys went into the saved draft, too
    wait(driver, lambda d: by_id(d, "work").is_displayed() and pressed_ranks(d)[:2] == [["2"], ["2"]])


def test_progress_skip_and_edit_last_label(site):
    from selenium.webdriver.common.by import By

    driver, server, store = site
    name = "skipper"
    sign_in(driver, server, store.add_labeler(name))
    assert by_id(driver, "progress").text == "You: 0 of 7 done · Campaign: 0 of 7 items complete"
    keys(driver, "s")  # skip the hostile item
    wait(driver, lambda d: by_id(d, "prompt").text.startswith("Markers"))
    assert by_id(driver, "progress").text == "You: 0 of 6 done · 1 skipped · Campaign: 0 of 7 items complete"
    label_everything(driver)
    keys(driver, "enter")
    wait(driver, lambda d: by_id(d, "prompt").text == LONG["prompt"])
    assert by_id(driver, "progress").text.startswith("You: 1 of 6 done")

    keys(driver, "b")  # back to the last label: ranks restored, then changed
    wait(driver, lambda d: by_id(d, "editing").is_displayed())
    assert by_id(driver, "prompt").text.startswith("Markers") and pressed_ranks(driver) == [["1"], ["2"], ["3"], ["4"]]
    cards(driver)[3].find_elements(By.CSS_SELECTOR, "button.rank")[0].click()  # D ties with A
    keys(driver, "enter")
    wait(driver, lambda d: by_id(d, "status").text == "Changes saved." and by_id(d, "prompt").text == LONG["prompt"])
    (row,) = [r for r in store.labeled_rows() if r["labeler"] == name]
    order = row["display_order"]
    assert row["tiers"] == [sorted([order[0], order[3]]), [order[1]], [order[2]]] and row["edited_at"] is not None
    (export,) = [c for c in store.export_labeled() if c.meta["labeler"] == name]
    assert export.meta["edited"] is True
    assert name in store.skips()[1]  # item 1, the hostile one
    keys(driver, "b")  # exported now: no more edits
    wait(driver, lambda d: "Nothing to edit" in by_id(d, "status").text)


def test_special_characters_are_shown_as_markers(site):
    from selenium.webdriver.common.by import By

    driver, server, store = site
    sign_in(driver, server, store.add_labeler("reader"))
    keys(driver, "s")
    wait(driver, lambda d: by_id(d, "prompt").text.startswith("Markers"))
    boxes = [c.find_element(By.CSS_SELECTOR, ".response-text") for c in cards(driver)]
    marks = [[m.text for m in b.find_elements(By.CSS_SELECTOR, ".marker")] for b in boxes]
    assert sorted(marks) == [["BEL", "RLO", "PDF", "ZWSP"], ["CR", "CR"], ["blank: 4 whitespace characters"], ["empty"]]
    texts = driver.execute_script("return Array.from(document.querySelectorAll('#responses .response-text, #prompt'),"
                                  " (e) => e.textContent)")
    assert not any(ch in t for t in texts for ch in "\u202e\u202c\u0007\r\u200b")  # shown, never interpreted
    assert by_id(driver, "prompt").text == "Markers: leftRLOright"


def test_long_response_is_collapsed_and_j_scrolls_to_it(site):
    from selenium.webdriver.common.by import By

    driver, server, store = site
    sign_in(driver, server, store.add_labeler("long-reader"))
    keys(driver, "s")
    wait(driver, lambda d: by_id(d, "prompt").text.startswith("Markers"))
    keys(driver, "s")
    wait(driver, lambda d: by_id(d, "prompt").text == LONG["prompt"])
    driver.set_window_size(700, 900)  # two cards per row: D is below the fold
    try:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        assert height < 3000, height  # a 9 kB response made the page 8,825 px tall
        long_box = next(c.find_element(By.CSS_SELECTOR, ".response-text") for c in cards(driver)
                        if "word word" in c.text)
        assert "long" in long_box.get_attribute("class")
        in_view = "const r = arguments[0].getBoundingClientRect(); return r.top >= -1 && r.bottom <= window.innerHeight + 1"
        assert not driver.execute_script(in_view, cards(driver)[3])
        keys(driver, "k")  # from A up to D, the last card
        wait(driver, lambda d: d.execute_script(in_view, cards(d)[3]))
        keys(driver, "j")  # and back to A
        wait(driver, lambda d: d.execute_script(in_view, cards(d)[0]))
    finally:
        driver.set_window_size(1280, 900)


def test_instructions_are_safe_markdown_and_flags_take_comments(site):
    from selenium.webdriver.common.by import By

    driver, server, store = site
    name = "commenter"
    sign_in(driver, server, store.add_labeler(name))
    box = by_id(driver, "instructions")
    assert box.find_element(By.TAG_NAME, "h3").text == "Guidelines"
    assert box.find_element(By.TAG_NAME, "strong").text == "correct"
    links = box.find_elements(By.TAG_NAME, "a")
    assert [a.get_attribute("href") for a in links] == ["https://example.org/guide"]  # no javascript: link
    assert box.find_elements(By.TAG_NAME, "img") == [] and "<img src=x onerror=alert(3)> stays text" in box.text
    assert [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".card .likert-end")][:2] == ["1 = very poor",
                                                                                             "7 = excellent"]
    label_everything(driver)
    keys(driver, "q")  # flag D (the focused card) as harmful: a comment box appears
    comment = wait(driver, lambda d: cards(d)[3].find_element(By.CSS_SELECTOR, "input.comment"))
    comment.send_keys("calls the user names")
    wait(driver, lambda d: by_id(d, "draft-status").text == "Draft saved")
    by_id(driver, "submit").click()
    wait(driver, lambda d: by_id(d, "status").text == "Saved.")
    (row,) = [r for r in store.labeled_rows() if r["labeler"] == name]
    stored_d = row["display_order"][3]
    assert row["flags"][stored_d] == ["harmful"] and row["comments"][stored_d] == {"harmful": "calls the user names"}


def test_researchers_page_needs_the_admin_token(site):
    from selenium.webdriver.common.by import By

    driver, server, store = site
    labeler = store.add_labeler("not-the-admin")
    sign_out_everyone(driver, server, "/admin")
    wait(driver, lambda d: by_id(d, "signin").is_displayed())
    by_id(driver, "token").send_keys(labeler)
    by_id(driver, "signin-btn").click()
    wait(driver, lambda d: by_id(d, "signin-error").text == "That is not this campaign's admin token.")
    assert not by_id(driver, "report").is_displayed()

    by_id(driver, "token").clear()
    by_id(driver, "token").send_keys(store.admin_token())
    by_id(driver, "signin-btn").click()
    wait(driver, lambda d: by_id(d, "report").is_displayed())
    people = {r.find_elements(By.TAG_NAME, "td")[0].text: r for r in
              driver.find_elements(By.CSS_SELECTOR, "#people tr")[1:]}
    assert set(people) == {p["name"] for p in store.labelers()}
    assert "ranks: Krippendorff's alpha (ordinal)" in by_id(driver, "between").text
    assert len(driver.find_elements(By.CSS_SELECTOR, "#items tr")) == 1 + len(
        {r["item_id"] for r in store.labeled_rows()})
