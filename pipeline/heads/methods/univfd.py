"""``univfd``: UniversalFakeDetect (Ojha et al., CVPR 2023), one linear layer on CLIP ViT-L/14's
image embedding of the center crop, trained as its official code does (AdamW, best validation
accuracy, the learning rate divided by ten on a plateau)."""

from __future__ import annotations

from nsnet.heads.baselines import SETTINGS, UnivFD
from nsnet.heads.head_training import paper_schedule
from nsnet.heads.method import Method, register

register(Method("univfd", UnivFD, recipe="clip_crop", published="univfd",
                schedule=lambda tp: paper_schedule(SETTINGS["univfd"], "best_val_acc", True),
                title="UniversalFakeDetect: linear probe on CLIP's center-crop embedding"))
