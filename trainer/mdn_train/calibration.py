"""Calibration of a predictive distribution on held-out data: does the probability it states match
how often things happen?

- PIT (probability integral transform): for each held-out target and output, the predicted
  marginal CDF at the true value. A calibrated model gives PIT values uniform on [0, 1]; a
  histogram piled in the middle means too wide, piled at both ends too narrow. `pit_ks` is the
  largest gap between their empirical CDF and the uniform one (0: perfect).
- Central intervals: the fraction of true values inside the central 50/90/95% interval of each
  output's marginal (the nominal fraction when calibrated).
- Highest-density regions of the joint distribution: the smallest region holding 50/90/95% of the
  predicted probability; the fraction of true targets inside. For a multimodal prediction this
  region is several islands, which central intervals cannot express.
- CRPS per output (closed form for a Gaussian mixture) and, for multi-output models, the energy
  score (from draws): proper scores in the target's units, lower is better, that reward
  calibration and sharpness together. From `scoringrules`.

The MDN and the least-squares baseline (a Gaussian with the residual standard deviation) get the
same checks. Everything is seeded: the same inputs give the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scoringrules as sr
from mdn_core.mixture import log_density, sample_mixture
from numpy.typing import NDArray
from scipy import stats

LEVELS = (0.5, 0.9, 0.95)
PIT_BINS = 10
MAX_ROWS = 4000  # held-out rows the checks use (the first ones)
HDR_DRAWS = 400  # draws per row that place the highest-density threshold
ES_DRAWS = 64  # draws per row for the energy score (its estimator compares every pair)
ES_CHUNK = 256  # rows per energy-score call: bounds its (rows, draws, draws, D) temporaries
SEED = 0


def _pit_summary(pit: NDArray[np.float64], names: list[str]) -> dict[str, Any]:
    """Histogram, KS distance from uniform and central-interval coverage of PIT values (N, D)."""
    out: dict[str, Any] = {}
    for d, name in enumerate(names):
        u = np.sort(pit[:, d])
        n = len(u)
        ks = float(max(np.max(np.arange(1, n + 1) / n - u), np.max(u - np.arange(n) / n)))
        hist = np.histogram(u, bins=PIT_BINS, range=(0.0, 1.0))[0] / n
        out[name] = {
            "pit_ks": ks,
            "pit_histogram": [round(float(h), 4) for h in hist],
            **{f"central_{int(c * 100)}": float(np.mean((u >= (1 - c) / 2) & (u <= (1 + c) / 2))) for c in LEVELS},
        }
    return out


def mdn_calibration(
    w: NDArray[np.floating], m: NDArray[np.floating], s: NDArray[np.floating], y: NDArray[np.floating],
    names: list[str],
) -> dict[str, Any]:  # fmt: skip
    """The checks above for a mixture (B, K), (B, K, D), (B, K, D) against targets y (B, D)."""
    w, m, s, y = (a[:MAX_ROWS].astype(np.float64) for a in (w, m, s, y))
    pit = np.sum(w[:, :, None] * stats.norm.cdf((y[:, None, :] - m) / s), axis=1)  # marginal CDFs (B, D)
    out: dict[str, Any] = {"outputs": _pit_summary(np.clip(pit, 0.0, 1.0), names)}
    draws = sample_mixture(w, m, s, HDR_DRAWS, np.random.default_rng(SEED)).astype(np.float64)
    threshold_source = log_density(w, m, s, draws)  # (B, N)
    observed = log_density(w, m, s, y)
    for c in LEVELS:
        threshold = np.quantile(threshold_source, 1 - c, axis=1)
        out[f"hdr_{int(c * 100)}"] = float(np.mean(observed >= threshold))
    crps = [float(np.mean(sr.crps_mixnorm(y[:, d], m[:, :, d], s[:, :, d], w))) for d in range(y.shape[1])]
    for name, value in zip(names, crps, strict=True):
        out["outputs"][name]["crps"] = value
    if y.shape[1] > 1:
        out["energy_score"] = _energy_score(y, draws[:, :ES_DRAWS])
    return out


def _energy_score(y: NDArray[np.floating], draws: NDArray[np.floating]) -> float:
    """Mean energy score of draws (B, N, D) for targets (B, D), in chunks of rows."""
    scores = [sr.es_ensemble(y[i : i + ES_CHUNK], draws[i : i + ES_CHUNK]) for i in range(0, len(y), ES_CHUNK)]
    return float(np.mean(np.concatenate(scores)))


def baseline_calibration(
    pred: NDArray[np.floating], std: NDArray[np.floating], y: NDArray[np.floating], names: list[str]
) -> dict[str, Any]:
    """The same checks for the least-squares baseline: N(pred, diag(std^2)) per row."""
    pred, y = pred[:MAX_ROWS].astype(np.float64), y[:MAX_ROWS].astype(np.float64)
    std = np.broadcast_to(np.asarray(std, dtype=np.float64), pred.shape)
    z = (y - pred) / std
    out: dict[str, Any] = {"outputs": _pit_summary(stats.norm.cdf(z), names)}
    # A Gaussian's highest-density regions are ellipsoids: inside at level c when the squared
    # Mahalanobis distance is below the chi-square quantile.
    distance = np.sum(z * z, axis=1)
    for c in LEVELS:
        out[f"hdr_{int(c * 100)}"] = float(np.mean(distance <= stats.chi2.ppf(c, y.shape[1])))
    for d, name in enumerate(names):
        out["outputs"][name]["crps"] = float(np.mean(sr.crps_normal(y[:, d], pred[:, d], std[:, d])))
    if y.shape[1] > 1:
        rng = np.random.default_rng(SEED)
        draws = pred[:, None, :] + std[:, None, :] * rng.standard_normal((len(y), ES_DRAWS, y.shape[1]))
        out["energy_score"] = _energy_score(y, draws)
    return out
