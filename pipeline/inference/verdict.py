"""The one verdict rule: ``generated``, ``real`` or ``uncertain`` from a probability.

A probability within ``band`` of the threshold is too close to call: ``predict``'s label
column, ``explain``'s picture and JSON (and any other reader of a bundle) say ``uncertain``
instead of flipping between REAL and GENERATED on noise. ``band`` is the bundle's
``uncertain_band`` (``evaluate.uncertain_band`` at training time; 0.0 in older bundles). The
edges follow the benchmarks' convention (``nsnet.metrics.is_fake``: fake iff
``prob > threshold``), so with ``band = 0`` the verdict is exactly ``evaluate``'s decision.
"""

from __future__ import annotations

import math

from nsnet.metrics import is_fake

FAKE, REAL, UNCERTAIN = "generated", "real", "uncertain"
VERDICTS = (FAKE, REAL, UNCERTAIN)


def verdict(prob: float, threshold: float, band: float = 0.0) -> str:
    """``"generated"`` if ``prob > threshold + band``, ``"real"`` if ``prob <= threshold - band``,
    else ``"uncertain"``.

    With ``band = 0`` this is ``is_fake(prob, threshold)``. A NaN probability is
    ``"uncertain"``.

    Example::

        verdict(0.499, 0.5, 0.05)  # 'uncertain'
        verdict(0.9, 0.5, 0.05)    # 'generated'
    """
    prob, threshold, band = float(prob), float(threshold), max(float(band), 0.0)
    if math.isnan(prob):
        return UNCERTAIN
    if is_fake(prob, threshold + band):
        return FAKE
    if not is_fake(prob, threshold - band):
        return REAL
    return UNCERTAIN
