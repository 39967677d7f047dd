"""The admin dashboard in Debian's Chromium, with and without the credential."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from caqe_core.models import Participant, Reservation, Trial
from caqe_core.plugins import Registry
from tests.results.synthetic import SyntheticStudy
from tests.support.server import ADMIN_PASSWORD, ServedStudy, build_study

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser(playwright_instance: Any) -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed")

    playwright = playwright_instance
    launched = playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
    )
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture
def served(
    small_study: SyntheticStudy, registry: Registry, tmp_path: Path
) -> Iterator[ServedStudy]:
    served = build_study(
        small_study.study.config.path,
        small_study.database_url,
        registry,
        tmp_path / "data",
    )
    served.start()
    try:
        yield served
    finally:
        served.stop()


def _store_one_more_trial(study: SyntheticStudy) -> None:
    """Complete the reservation of an incomplete participant, as the API would."""
    now = dt.datetime.now(dt.UTC)
    with study.session_factory() as session, session.begin():
        reservation = session.scalars(
            select(Reservation)
            .join(Participant)
            .where(Reservation.status == "active")
            .order_by(Reservation.id)
        ).first()
        assert reservation is not None
        labels = [signal["id"] for signal in reservation.plan["signals"]]
        reservation.status = "completed"
        reservation.completed_at = now
        session.add(
            Trial(
                reservation_id=reservation.id,
                participant_id=reservation.participant_id,
                condition_id=reservation.condition_id,
                idempotency_key=secrets.token_hex(8),
                response={"ratings": {label: 5.0 for label in labels}},
                acknowledgement={"stored": True},
                time_on_page_ms=12000.0,
                created_at=now,
            )
        )


def test_dashboard_without_credential_is_refused(
    browser: object, served: ServedStudy, tmp_path: Path
) -> None:
    from playwright.sync_api import Error

    page = browser.new_page()  # type: ignore[attr-defined]
    # Chromium responds to the basic-authentication challenge without credentials
    # by failing the navigation, so the dashboard never renders.
    with pytest.raises(Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
        page.goto(served.url + "/admin/")
    page.screenshot(path=str(tmp_path / "dashboard-without-credential.png"))
    assert page.locator("#conditions").count() == 0

    wrong = browser.new_context(  # type: ignore[attr-defined]
        http_credentials={"username": "admin", "password": "wrong-password"}
    )
    refused = wrong.new_page()
    response = refused.goto(served.url + "/admin/")
    assert response.status == 401
    assert "admin password" in refused.content()
    assert refused.locator("#conditions").count() == 0
    refused.screenshot(path=str(tmp_path / "dashboard-wrong-credential.png"))
    wrong.close()


def test_dashboard_refreshes_without_reload(
    browser: object, served: ServedStudy, small_study: SyntheticStudy, tmp_path: Path
) -> None:
    context = browser.new_context(  # type: ignore[attr-defined]
        http_credentials={"username": "admin", "password": ADMIN_PASSWORD},
        viewport={"width": 1200, "height": 1100},
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    response = page.goto(served.url + "/admin/")
    assert response.status == 200

    trials = len({r["trial"] for r in small_study.ratings})
    target = 6 * 60
    assert page.locator("#trials").inner_text() == f"{trials} / {target}"
    assert page.locator("#participants-total").inner_text() == str(
        len(small_study.statuses)
    )
    assert page.locator("#conditions tbody tr").count() == 6
    assert page.locator("#screening tbody tr").first.inner_text().startswith("consent")
    page.evaluate("window.loadedOnce = true")

    _store_one_more_trial(small_study)
    page.wait_for_function(
        "(expected) => document.getElementById('trials').textContent === expected",
        arg=f"{trials + 1} / {target}",
        timeout=15000,
    )
    assert page.evaluate("window.loadedOnce") is True, "the page was reloaded"
    assert errors == []
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    context.close()
