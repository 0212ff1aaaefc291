"""Shared fixtures: small models trained and exported once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

SMALL = ["--quiet", "--epochs", "4", "--patience", "4", "--hidden", "16,16"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """runs/ and models/ with a small inverse_sine and two_link_arm, trained and exported."""
    from mdn_train import export, train

    root = tmp_path_factory.mktemp("trained")
    runs, models = root / "runs", root / "models"
    assert train.main(["--dataset", "inverse_sine", "--num-samples", "2000", "--runs", str(runs), *SMALL]) == 0
    assert train.main(["--dataset", "two_link_arm", "--num-samples", "4000", "--runs", str(runs), *SMALL]) == 0
    assert export.main(["--all", "--runs", str(runs), "--models", str(models)]) == 0
    return {"runs": runs, "models": models}
