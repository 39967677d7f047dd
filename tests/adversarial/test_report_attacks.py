"""Analysis of small and unusual data sets, as a pilot study produces them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from caqe_mushra import scoring as mushra_scoring
from caqe_pairwise import report as pairwise_report
from caqe_pairwise import scoring as pairwise_scoring

SYSTEMS = {"codec_a": 0.6, "codec_b": 0.0, "codec_c": -0.6}


def test_pairwise_report_one_participant(tmp_path: Path) -> None:
    judgements = pairwise_scoring.simulate_judgements(SYSTEMS, 1, 30, seed=3)

    sections = pairwise_report.build_sections(judgements, tmp_path)

    assert any("Bradley" in section.html for section in sections)
    assert list(tmp_path.glob("pairwise_bradley_terry_*.png"))


def test_plot_interval_beside_score(tmp_path: Path) -> None:
    scores = pd.DataFrame(
        {
            "score": [0.5, -0.5],
            "ci_low": [0.6, -0.9],
            "ci_high": [0.9, -0.1],
        },
        index=pd.Index(["codec_a", "codec_b"], name="system"),
    )

    png, svg = pairwise_scoring.plot_scores(scores, tmp_path / "scores")

    assert png.exists()
    assert svg.exists()


def mushra_ratings(hidden_reference: dict[str, float], pages: int) -> pd.DataFrame:
    """Ratings of a MUSHRA study where each listener rates every page.

    ``hidden_reference`` gives each listener's rating of the hidden reference;
    the 7 kHz anchor gets 50 and the system 70 from everyone.
    """
    rows = []
    for participant, reference_rating in hidden_reference.items():
        for page in range(pages):
            for system, role, rating in [
                ("hidden_reference", "reference", reference_rating),
                ("lowpass_7000", "anchor_mid", 50.0),
                ("codec", "system", 70.0),
            ]:
                rows.append(
                    {
                        "participant": participant,
                        "item": f"item{page}",
                        "scale": "quality",
                        "condition": f"item{page}/quality",
                        "system": system,
                        "role": role,
                        "rating": rating,
                    }
                )
    return pd.DataFrame(rows)


def test_post_screening_excludes_one_of_five() -> None:
    ratings = mushra_ratings(
        {"careless": 40.0, "p1": 100.0, "p2": 95.0, "p3": 100.0, "p4": 92.0}, pages=6
    )

    result = mushra_scoring.post_screening(ratings)

    assert result.excluded_participants == ["careless"]


def test_post_screening_excludes_one_of_three() -> None:
    ratings = mushra_ratings({"careless": 40.0, "p1": 100.0, "p2": 95.0}, pages=6)

    result = mushra_scoring.post_screening(ratings)

    assert result.excluded_participants == ["careless"]
