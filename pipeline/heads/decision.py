"""The decision a bundle makes: a calibration of the head's logit and a threshold on the result.

Both are fit on the *validation* split at training time and stored in the bundle, so
``evaluate``, ``predict`` and ``explain`` give the same probability and the same verdict:

* calibration (``evaluate.calibration``): ``none``; ``temperature`` (Guo et al. 2017:
  ``sigmoid(logit / T)``, one parameter, ranking unchanged); ``platt`` (Platt 1999:
  ``sigmoid(a * logit + b)``, as scikit-learn's sigmoid calibration). Both minimise the
  validation log-loss against Platt's smoothed targets, which keeps a perfectly separated
  validation split from pushing every probability to 0 or 1.
* threshold (``evaluate.threshold``): a number, or a rule on the calibrated validation
  probabilities: ``val_acc`` (best accuracy), ``val_eer`` (false-positive rate = false-negative
  rate), ``val_fpr:<x>`` (the lowest threshold that flags at most a share x of real images).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, log_expit

from nsnet.config import ThresholdRule, parse_threshold
from nsnet.metrics import expected_calibration_error

LOG_T_BOUNDS = (-5.0, 5.0)  # temperature in [0.0067, 148]: a separable val set cannot blow up


class DecisionError(ValueError):
    """The validation split cannot support the requested threshold rule or calibration."""


@dataclass(frozen=True)
class Decision:
    """``prob = sigmoid(scale * logit + shift)``; generated when ``prob > threshold``
    (``nsnet.metrics.is_fake``: exactly the threshold counts as real)."""

    threshold: float = 0.5
    rule: str = "0.5"
    calibration: str = "none"
    scale: float = 1.0
    shift: float = 0.0

    def prob(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probability of 'generated' for raw head logits."""
        return expit(self.scale * np.asarray(logits, dtype=np.float64) + self.shift)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _nll(z: np.ndarray, target: np.ndarray) -> float:
    """Mean binary cross-entropy of logits ``z`` against (possibly soft) targets."""
    return float(-np.mean(target * log_expit(z) + (1 - target) * log_expit(-z)))


def _need_both_classes(y: np.ndarray, what: str) -> None:
    if len(y) == 0 or y.min() == y.max():
        raise DecisionError(
            f"{what} needs validation rows of both real and fake images (got {len(y)} rows, "
            f"{int(np.sum(y))} fake); set evaluate.threshold to a number and "
            "evaluate.calibration: none, or add validation images"
        )


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature T minimising the validation log-loss of ``sigmoid(logit / T)``.

    The targets are Platt's smoothed labels (as for ``platt``): on a validation split that the
    head separates perfectly, hard labels would drive T to 0 (every probability 0 or 1).
    """
    z, t = np.asarray(logits, np.float64), platt_targets(y)
    res = minimize_scalar(lambda lt: _nll(z * math.exp(-lt), t), bounds=LOG_T_BOUNDS,
                          method="bounded", options={"xatol": 1e-8})
    return math.exp(float(res.x))


def platt_targets(y: np.ndarray) -> np.ndarray:
    """Platt's smoothed targets: (N+ + 1) / (N+ + 2) for fakes, 1 / (N- + 2) for reals."""
    y = np.asarray(y)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    return np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))


def fit_platt(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) minimising the log-loss of ``sigmoid(a * logit + b)`` against Platt's targets."""
    z, t = np.asarray(logits, np.float64), platt_targets(y)

    def loss(ab: np.ndarray) -> tuple[float, np.ndarray]:
        s = ab[0] * z + ab[1]
        g = expit(s) - t
        return _nll(s, t), np.array([np.mean(g * z), np.mean(g)])

    res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-10, "ftol": 1e-14, "maxiter": 1000})
    return float(res.x[0]), float(res.x[1])


def _candidates(prob: np.ndarray) -> np.ndarray:
    """Thresholds between consecutive distinct scores, plus one below all (everything flagged)
    and the top score (nothing flagged, as ``prob > threshold`` is the rule)."""
    s = np.unique(prob)
    mids = (s[:-1] + s[1:]) / 2
    return np.r_[np.nextafter(s[0], -np.inf), mids, s[-1]]


def _rates(y: np.ndarray, prob: np.ndarray, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False-positive and true-positive rates of ``prob > t`` (``is_fake``) for every t."""
    real, fake = np.sort(prob[y == 0]), np.sort(prob[y == 1])
    fpr = (len(real) - np.searchsorted(real, thr, side="right")) / max(len(real), 1)
    tpr = (len(fake) - np.searchsorted(fake, thr, side="right")) / max(len(fake), 1)
    return fpr, tpr


def _closest_to_half(thr: np.ndarray, best: np.ndarray) -> float:
    """Among tied thresholds, the one nearest 0.5 (a stable, unsurprising choice)."""
    cand = thr[best]
    return float(cand[np.argmin(np.abs(cand - 0.5))])


def choose_threshold(rule: ThresholdRule, y: np.ndarray, prob: np.ndarray) -> float:
    """The threshold ``rule`` picks on validation labels ``y`` and probabilities ``prob``."""
    if rule.kind == "fixed":
        return rule.value
    y = np.asarray(y).astype(np.int64)
    prob = np.asarray(prob, np.float64)
    _need_both_classes(y, f"evaluate.threshold={rule.text}")
    thr = _candidates(prob)
    fpr, tpr = _rates(y, prob, thr)
    if rule.kind == "val_acc":
        n_real, n_fake = int((y == 0).sum()), int((y == 1).sum())
        acc = ((1 - fpr) * n_real + tpr * n_fake) / len(y)
        return _closest_to_half(thr, np.isclose(acc, acc.max(), rtol=0, atol=1e-12))
    if rule.kind == "val_eer":
        gap = np.abs(fpr - (1 - tpr))
        return _closest_to_half(thr, np.isclose(gap, gap.min(), rtol=0, atol=1e-12))
    ok = fpr <= rule.value + 1e-12  # val_fpr: the lowest such threshold catches most fakes
    return float(thr[ok].min())


def fit_decision(threshold: float | str, calibration: str, val_logits: np.ndarray,
                 val_y: np.ndarray) -> tuple[Decision, dict[str, Any]]:
    """Fit the calibration, then choose the threshold, on validation logits and labels.

    Returns the decision and a report (validation ECE before and after, rows used).
    """
    rule = parse_threshold(threshold)
    z = np.asarray(val_logits, np.float64)
    y = np.asarray(val_y).astype(np.int64)
    scale, shift = 1.0, 0.0
    if calibration != "none":
        _need_both_classes(y, f"evaluate.calibration={calibration}")
        if calibration == "temperature":
            scale = 1.0 / fit_temperature(z, y)
        elif calibration == "platt":
            scale, shift = fit_platt(z, y)
        else:
            raise DecisionError(f"evaluate.calibration: unknown method {calibration!r}")
    decision = Decision(0.5, rule.text, calibration, scale, shift)
    prob = decision.prob(z)
    decision = Decision(choose_threshold(rule, y, prob), rule.text, calibration, scale, shift)
    report = {"n_val": int(len(y)),
              "val_ece_raw": expected_calibration_error(y, expit(z)) if len(y) else math.nan,
              "val_ece": expected_calibration_error(y, prob) if len(y) else math.nan}
    return decision, report
