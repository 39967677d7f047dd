"""The whole participant flow over real HTTP with the test-only 'scale' test type."""

from __future__ import annotations

import html
import json
import re

import requests

from tests.support.server import ServedStudy


def _trial_data(page: str) -> dict:
    match = re.search(
        r"<script id='trial' type='application/json'>(.*?)</script>", page
    )
    assert match, "trial page carries its data"
    return json.loads(html.unescape(match.group(1)))


def test_participant_completes_scale_study(served_scale: ServedStudy) -> None:
    http = requests.Session()
    start = http.get(f"{served_scale.url}/")
    assert start.status_code == 200
    begun = http.post(f"{served_scale.url}/lab/", allow_redirects=False)
    assert begun.status_code == 302
    page_url = served_scale.url + begun.headers["Location"]
    consent = http.get(page_url)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', consent.text).group(1)
    agreed = http.post(
        page_url + "step/consent", data={"csrf_token": csrf, "agree": "yes"}
    )
    assert agreed.status_code == 200

    stored = []
    for _ in range(2):
        trial = _trial_data(http.get(page_url).text)
        body = {
            "idempotency_key": f"k-{len(stored)}-0123456789",
            "response": {"ratings": {signal["id"]: 7 for signal in trial["signals"]}},
            "events": [],
        }
        answer = http.post(
            served_scale.url + trial["submit"],
            json=body,
            headers={"X-CAQE-CSRF": trial["csrf"]},
        )
        assert answer.status_code == 200
        stored.append(answer.json())
    final = http.get(page_url)
    assert "Thank you" in final.text
    assert "completion-code" in final.text
