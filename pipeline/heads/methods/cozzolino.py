"""``cozzolino``: Cozzolino et al. (CVPRW 2024), a linear classifier (hinge loss: the paper's
linear SVM) on OpenCLIP ViT-L/14 CommonPool-XL's L2-normalised features, trained as its official
code does (last epoch)."""

from __future__ import annotations

from nsnet.heads.baselines import SETTINGS, Cozzolino
from nsnet.heads.head_training import paper_schedule
from nsnet.heads.method import Method, register

register(Method("cozzolino", Cozzolino, recipe="cozzolino", published="cozzolino",
                schedule=lambda tp: paper_schedule(SETTINGS["cozzolino"]),
                title="Cozzolino et al.: linear SVM on OpenCLIP CommonPool features"))
