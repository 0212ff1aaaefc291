"""The MDN and the least-squares baseline (PyTorch), with the standardisation baked in."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdn_train.config import ModelConfig

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class Standardiser(nn.Module):
    """Holds the per-column mean and std of the training data as buffers (saved and exported)."""

    mean: Tensor
    std: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, data: Tensor) -> None:
        self.mean.copy_(data.mean(dim=0))
        self.std.copy_(data.std(dim=0).clamp_min(1e-8))


class MDN(nn.Module):
    """MLP -> K-component diagonal Gaussian mixture over D-dimensional targets.

    Trains in standardised units; `mixture` returns raw units, which is what is exported.
    """

    def __init__(self, in_dim: int, out_dim: int, config: ModelConfig) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.k = in_dim, out_dim, config.components
        self.scale_floor = config.scale_floor
        self.x_norm = Standardiser(in_dim)
        self.y_norm = Standardiser(out_dim)
        self.net = mlp(in_dim, config.hidden, self.k * (1 + 2 * out_dim), config.activation)

    def _standard_params(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mixture in standardised units: log_weights (B, K), means (B, K, D), scales (B, K, D)."""
        h = self.net((x - self.x_norm.mean) / self.x_norm.std)
        logits, mu, raw_scale = h.split([self.k, self.k * self.out_dim, self.k * self.out_dim], dim=-1)
        log_w = F.log_softmax(logits, dim=-1)
        means = mu.reshape(-1, self.k, self.out_dim)
        scales = F.softplus(raw_scale).reshape(-1, self.k, self.out_dim) + self.scale_floor
        return log_w, means, scales

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor | None]:
        """Returns ((log_weights, means, scales) in standardised units, NLL per raw-unit sample or None)."""
        params = self._standard_params(x)
        loss = None if y is None else self.nll(params, y).mean()
        return params, loss

    def nll(self, params: tuple[Tensor, Tensor, Tensor], y: Tensor) -> Tensor:
        """Negative log-likelihood of raw-unit targets y (B, D), in raw units: (B,)."""
        log_w, means, scales = params
        z = ((y - self.y_norm.mean) / self.y_norm.std)[:, None, :]  # (B, 1, D)
        comp = -0.5 * (((z - means) / scales) ** 2).sum(-1) - scales.log().sum(-1)  # (B, K)
        comp = comp - 0.5 * self.out_dim * math.log(2 * math.pi)
        log_p = torch.logsumexp(log_w + comp, dim=-1) - self.y_norm.std.log().sum()
        return -log_p

    def mixture(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The served mixture in raw units: weights (B, K), means (B, K, D), scales (B, K, D)."""
        log_w, means, scales = self._standard_params(x)
        return log_w.exp(), means * self.y_norm.std + self.y_norm.mean, scales * self.y_norm.std


class MixtureExport(nn.Module):
    """The exported graph: x (B, in_dim) -> weights, means, scales, all in raw units."""

    def __init__(self, mdn: MDN) -> None:
        super().__init__()
        self.mdn = mdn

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.mdn.mixture(x)


class LeastSquares(nn.Module):
    """The baseline: an MLP trained with squared error, i.e. the conditional mean."""

    def __init__(self, in_dim: int, out_dim: int, hidden: tuple[int, ...], activation: str) -> None:
        super().__init__()
        self.x_norm = Standardiser(in_dim)
        self.y_norm = Standardiser(out_dim)
        self.net = mlp(in_dim, hidden, out_dim, activation)

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Returns (prediction in raw units (B, D), mean squared error in standardised units or None)."""
        z = self.net((x - self.x_norm.mean) / self.x_norm.std)
        pred = z * self.y_norm.std + self.y_norm.mean
        loss = None if y is None else ((z - (y - self.y_norm.mean) / self.y_norm.std) ** 2).mean()
        return pred, loss
