"""Two first starts of the same new study at once store it once."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from caqe_core.db import make_engine, upgrade
from tests.support.studies import scale_study


def _prepare(arguments: tuple[str, str, str]) -> int:
    config_path, database_url, data_dir = arguments
    os.environ["CAQE_PLUGINS"] = "local_lab"
    from caqe_core.config import load_config
    from caqe_core.db import make_engine, make_session_factory
    from caqe_core.plugins import build_registry
    from caqe_core.study import prepare_study
    from tests.support import scale_plugin

    registry = build_registry([("scale", scale_plugin)])
    factory = make_session_factory(make_engine(database_url))
    study = prepare_study(
        load_config(Path(config_path), registry), registry, factory, Path(data_dir)
    )
    return study.experiment_id


def test_concurrent_first_starts_store_once(database_url: str, tmp_path: Path) -> None:
    config = scale_study(tmp_path / "study")
    engine = make_engine(database_url)
    upgrade(engine)
    engine.dispose()
    arguments = [(str(config), database_url, str(tmp_path / "data"))] * 4

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        ids = pool.map(_prepare, arguments)

    assert len(set(ids)) == 1
