"""Hearing response levels: server-side checks of the posted attenuations."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from caqe_core.plugins import Registry
from caqe_core.study import generated_dir
from tests.screening.helpers import screening_config, serve, start_over_http


def test_levels_validated_per_field(
    tmp_path: Path, sqlite_url: str, registry: Registry
) -> None:
    section = {"frequencies": [1000], "runs": 2, "floor_db": -60}
    path = screening_config(
        tmp_path / "study", ["hearing_response"], hearing_response=section
    )
    served = serve(path, sqlite_url, registry, tmp_path / "data")
    try:
        http, page_url, csrf = start_over_http(served.url)
        page = http.get(page_url).text
        fields = re.findall(r'name="(level_1000_\d)"', page)
        assert sorted(fields) == ["level_1000_1", "level_1000_2"]
        rejected = http.post(
            page_url + "step/hearing_response",
            data={"csrf_token": csrf, "level_1000_1": "-61", "level_1000_2": "x"},
        )
        assert rejected.status_code == 422
        assert "Level -61 dB is outside -60 to 0 dB." in rejected.text
        accepted = http.post(
            page_url + "step/hearing_response",
            data={"csrf_token": csrf, "level_1000_1": "-30", "level_1000_2": "-34"},
        )
        assert accepted.status_code == 200

        folder = (
            generated_dir(served.data_dir, served.study.config.name)
            / "screening"
            / "hearing_response"
        )
        samples, rate = sf.read(str(folder / "tone-1000.wav"))
        pulse = samples[round(0.01 * rate) : round(0.24 * rate)]
        assert 20 * np.log10(np.sqrt(np.mean(pulse**2))) == pytest.approx(
            -20.0, abs=0.05
        )
        assert not samples[round(0.25 * rate) :].any()
    finally:
        served.stop()
