"""Live progress: progress_summary, `caqe status` and the admin API's credential."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from click.testing import Result

from caqe_core.plugins import Registry
from caqe_core.progress import progress_summary
from tests.results.synthetic import SyntheticStudy
from tests.support.server import ADMIN_PASSWORD, ServedStudy, build_study


@pytest.fixture
def served_small(
    small_study: SyntheticStudy, registry: Registry, tmp_path: Path
) -> Iterator[ServedStudy]:
    config_path = small_study.study.config.path
    served = build_study(
        config_path, small_study.database_url, registry, tmp_path / "data"
    )
    served.start()
    try:
        yield served
    finally:
        served.stop()


def test_progress_summary_numbers(small_study: SyntheticStudy) -> None:
    with small_study.session_factory() as session:
        summary = progress_summary(session, small_study.study)

    statuses = small_study.statuses
    assert summary["participants_total"] == len(statuses)
    assert summary["participants"]["completed"] == sum(
        s == "completed" for s in statuses.values()
    )
    assert summary["completion_rate"] == pytest.approx(
        summary["participants"]["completed"] / len(statuses)
    )
    trials = {r["trial"] for r in small_study.ratings}
    assert summary["completed_trials"] == len(trials)
    assert summary["target_trials"] == 6 * 60
    # The incomplete participants' active reservations expired in May 2024.
    assert summary["active_reservations"] == 0
    seconds = np.array(list(small_study.time_on_page_ms.values())) / 1000
    assert summary["median_trial_seconds"] == pytest.approx(np.median(seconds))
    per_condition = {row["key"]: row for row in summary["conditions"]}
    for key in per_condition:
        condition_trials = {
            r["trial"] for r in small_study.ratings if r["condition"] == key
        }
        assert per_condition[key]["completed"] == len(condition_trials)
        expected = np.median(
            [small_study.time_on_page_ms[t] / 1000 for t in condition_trials]
        )
        assert per_condition[key]["median_seconds"] == pytest.approx(expected)

    consent = {step["step"]: step for step in summary["screening"]}["consent"]
    assert consent["participants"] == len(statuses)
    assert consent["failed"] == len(small_study.screened_out)
    assert consent["pass_rate"] == pytest.approx(
        1 - len(small_study.screened_out) / len(statuses)
    )
    exclusions = summary["exclusions"]
    assert exclusions["participants"] == len(small_study.screened_out) + len(
        small_study.flagged
    )
    assert exclusions["by_rule"] == {
        "flag": len(small_study.flagged),
        "screening": len(small_study.screened_out),
    }


def test_status_command_prints_progress(
    run_cli: Callable[..., Result], small_study: SyntheticStudy
) -> None:
    result = run_cli("status", "--database-url", small_study.database_url)
    assert result.exit_code == 0, result.output
    with small_study.session_factory() as session:
        summary = progress_summary(session, small_study.study)
    assert f"Participants: {len(small_study.statuses)} (" in result.output
    assert f"Completion rate: {summary['completion_rate']:.0%}" in result.output
    assert (
        f"Median time per trial: {summary['median_trial_seconds']:.1f} s"
        in result.output
    )
    consent = summary["screening"][0]
    assert (
        f"Screening consent: {consent['passed']} of {consent['participants']} passed"
        in result.output
    )
    assert f"Excluded so far: {summary['exclusions']['participants']}" in result.output
    for row in summary["conditions"]:
        assert any(
            line.split()[:2] == [row["key"], str(row["completed"])]
            for line in result.output.splitlines()
        )


ADMIN_PATHS = ("/admin/", "/admin/api/progress", "/admin/participants")


def test_admin_pages_need_the_credential(served_small: ServedStudy) -> None:
    for path in ADMIN_PATHS:
        anonymous = requests.get(served_small.url + path, timeout=10)
        assert anonymous.status_code == 401, path
        assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
        assert "Progress of" not in anonymous.text
        wrong = requests.get(
            served_small.url + path, params={"token": "wrong"}, timeout=10
        )
        assert wrong.status_code == 401, path
        basic_wrong = requests.get(
            served_small.url + path, auth=("admin", "wrong"), timeout=10
        )
        assert basic_wrong.status_code == 401, path


def test_admin_api_returns_progress(
    served_small: ServedStudy, small_study: SyntheticStudy
) -> None:
    by_token = requests.get(
        served_small.url + "/admin/api/progress",
        params={"token": ADMIN_PASSWORD},
        timeout=10,
    )
    assert by_token.status_code == 200
    assert by_token.headers["Cache-Control"] == "no-store"
    data = by_token.json()
    assert data["participants_total"] == len(small_study.statuses)
    assert data["completed_trials"] == len({r["trial"] for r in small_study.ratings})
    by_basic = requests.get(
        served_small.url + "/admin/api/progress",
        auth=("admin", ADMIN_PASSWORD),
        timeout=10,
    )
    assert by_basic.status_code == 200
    assert by_basic.json()["completed_trials"] == data["completed_trials"]
    by_header = requests.get(
        served_small.url + "/admin/api/progress",
        headers={"X-CAQE-Admin-Token": ADMIN_PASSWORD},
        timeout=10,
    )
    assert by_header.status_code == 200
