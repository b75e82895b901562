"""Inverse CDF of the Beta distribution, for the "Beta" schedule without a scipy dependency.

CDF: the regularized incomplete beta function I_x(a, b), evaluated with its continued fraction
(modified Lentz method); the inverse is found by bisection, which is robust at the U-shaped a, b < 1.
"""

from __future__ import annotations

import math

import numpy as np

_TINY = 1e-300


def _betacf(a: float, b: float, x: np.ndarray, iterations: int = 300) -> np.ndarray:
    """Continued fraction for I_x(a, b), elementwise; converges fast for x < (a + 1) / (a + b + 2)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
    h = d.copy()
    for m in range(1, iterations + 1):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
            c = 1.0 + aa / c
            c = np.where(np.abs(c) < _TINY, _TINY, c)
            delta = d * c
            h = h * delta
        if delta.size == 0 or np.all(np.abs(delta - 1.0) < 1e-15):
            break
    return h


def beta_cdf(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """Regularized incomplete beta function I_x(a, b) for x in [0, 1]."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    inner = np.clip(x, 1e-300, 1 - 1e-16)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * np.log(inner) + b * np.log1p(-inner)
    front = np.exp(log_front)
    # Each side of the threshold uses the form whose continued fraction converges quickly there.
    use_direct = inner < (a + 1.0) / (a + b + 2.0)
    out = np.empty_like(inner)
    out[use_direct] = front[use_direct] * _betacf(a, b, inner[use_direct]) / a
    rest = ~use_direct
    out[rest] = 1.0 - front[rest] * _betacf(b, a, 1.0 - inner[rest]) / b
    return np.where(x <= 0, 0.0, np.where(x >= 1, 1.0, out))


def beta_ppf(q: np.ndarray, a: float, b: float, iterations: int = 60) -> np.ndarray:
    """Quantile function (inverse CDF) of Beta(a, b), elementwise, to about 1e-16."""
    q = np.asarray(q, dtype=np.float64)
    lo, hi = np.zeros_like(q), np.ones_like(q)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        below = beta_cdf(mid, a, b) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.where(q <= 0, 0.0, np.where(q >= 1, 1.0, (lo + hi) / 2))
