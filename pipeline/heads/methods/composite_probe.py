"""``composite_probe``: a linear probe (BCE) on the raw CLIP embedding of our patch composite.

UniversalFakeDetect's classifier on another input, so not UniversalFakeDetect (``univfd`` is).
Called ``ufd`` before; bundles and params saved under that name resolve to this head.
"""

from __future__ import annotations

from nsnet.heads.detectors import CompositeProbe
from nsnet.heads.losses import bce_loss
from nsnet.heads.method import Method, register

register(Method(
    "composite_probe", CompositeProbe, recipe="composite",
    title="linear probe (BCE) on the CLIP embedding of our patch composite",
    loss=lambda out, y, x, tp, pos_weight: bce_loss(out.logit, y, pos_weight),
    old_names=("ufd",),
    renamed_why="'ufd' was renamed 'composite_probe': it is a linear probe on our patch "
                "composites, not UniversalFakeDetect. UniversalFakeDetect's own probe (CLIP "
                "embedding of the center-cropped image) is the head 'univfd'"))
