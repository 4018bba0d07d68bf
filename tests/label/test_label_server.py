"""A real uvicorn server in a subprocess: an acknowledged label survives ``kill -9`` and a restart."""

from __future__ import annotations

import pytest

httpx = pytest.importorskip("httpx", reason="the test extra is not installed: pip install '.[test]'")
pytest.importorskip("uvicorn", reason="the label extra is not installed: pip install '.[label]'")

from feedback_lm.label.store import open_campaign
from tests.label.helpers import Server, items, make_campaign, rank_label


@pytest.mark.slow  # two server start-ups (a few seconds each on a busy machine)
def test_acknowledged_label_survives_kill_9(tmp_path):
    make_campaign(tmp_path / "c", items(2), mode="rank", likert=True, flags=["harmful"])
    store = open_campaign(tmp_path / "c")
    token = store.add_labeler("ada")
    store.close()
    headers = {"Authorization": f"Bearer {token}"}
    body = rank_label("ada-kill-0001", flags=[[], ["harmful"], [], []])

    server = Server(tmp_path / "c").start()
    try:
        item = httpx.post(server.url + "/api/next", headers=headers).json()
        ack = httpx.post(f"{server.url}/api/assignments/{item['assignment_id']}/label", headers=headers, json=body)
        assert ack.status_code == 200 and not ack.json()["duplicate"]
    finally:
        server.kill()  # right after the acknowledgement

    server = Server(tmp_path / "c", port=server.port).start()
    try:
        again = httpx.post(f"{server.url}/api/assignments/{item['assignment_id']}/label", headers=headers, json=body)
        assert again.json() == {**ack.json(), "duplicate": True}  # the retry finds the stored label
        assert httpx.post(server.url + "/api/next", headers=headers).json()["prompt"] != item["prompt"]
    finally:
        server.stop()
    store = open_campaign(tmp_path / "c")
    (row,) = store.export_labeled()
    order = row.meta["display_order"]  # the page's positions, mapped back by the server
    assert row.tiers == [[order[2]], sorted([order[0], order[3]]), [order[1]]]
    assert row.meta["flags"][order[1]] == ["harmful"] and sum(map(bool, row.meta["flags"])) == 1
    store.close()
