"""Calibration checks: a model that states the true distribution scores as calibrated, one that
is too sharp or unimodal where the truth is not does not; training is repeatable bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mdn_core.mixture import sample_mixture
from mdn_train import train
from mdn_train.calibration import baseline_calibration, mdn_calibration

from tests.conftest import SMALL


def bimodal(rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row a two-component mixture in 2-D, and one target drawn from it."""
    rng = np.random.default_rng(3)
    w = np.tile([[0.6, 0.4]], (rows, 1))
    m = np.stack([rng.normal(-2, 0.3, (rows, 2)), rng.normal(2, 0.3, (rows, 2))], axis=1)
    s = rng.uniform(0.3, 0.8, (rows, 2, 2))
    y = sample_mixture(w, m, s, 1, np.random.default_rng(4))[:, 0].astype(np.float64)
    return w, m, s, y


def test_the_true_distribution_is_calibrated():
    w, m, s, y = bimodal(4000)
    report = mdn_calibration(w, m, s, y, ["a", "b"])
    for name in ("a", "b"):
        out = report["outputs"][name]
        assert out["pit_ks"] < 0.03
        for level in (50, 90, 95):
            assert out[f"central_{level}"] == pytest.approx(level / 100, abs=0.025)
        assert sum(out["pit_histogram"]) == pytest.approx(1.0, abs=1e-3)
    for level in (50, 90, 95):
        assert report[f"hdr_{level}"] == pytest.approx(level / 100, abs=0.025)


def test_too_sharp_and_unimodal_predictions_show_up():
    w, m, s, y = bimodal(4000)
    sharp = mdn_calibration(w, m, s * 0.4, y, ["a", "b"])
    assert sharp["hdr_90"] < 0.6 and sharp["outputs"]["a"]["central_90"] < 0.8
    # One Gaussian with the right mean and spread: its central intervals are fine-ish, but its
    # highest-density region sits between the modes, where targets never are.
    mean = np.sum(w[:, :, None] * m, axis=1)
    std = np.std(y - mean, axis=0)
    flat = baseline_calibration(mean, std, y, ["a", "b"])
    true = mdn_calibration(w, m, s, y, ["a", "b"])
    assert flat["hdr_50"] < 0.4  # 0.5 when calibrated (the true mixture: within 0.025)
    assert true["energy_score"] < flat["energy_score"]
    assert true["outputs"]["a"]["crps"] < flat["outputs"]["a"]["crps"]


def test_training_twice_gives_identical_weights(tmp_path):
    args = ["--dataset", "two_link_arm", "--num-samples", "3000", *SMALL]
    for run in ("first", "second"):
        assert train.main([*args, "--runs", str(tmp_path / run)]) == 0
    first = torch.load(tmp_path / "first" / "two_link_arm" / "checkpoint.pt", weights_only=False)
    second = torch.load(tmp_path / "second" / "two_link_arm" / "checkpoint.pt", weights_only=False)
    keys = [k for k, v in first.items() if isinstance(v, dict) and v and all(torch.is_tensor(t) for t in v.values())]
    assert keys  # the model and baseline state dicts
    for key in keys:
        assert first[key].keys() == second[key].keys()
        for name, tensor in first[key].items():
            assert torch.equal(tensor, second[key][name]), (key, name)
