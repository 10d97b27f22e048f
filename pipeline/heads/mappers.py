"""How the advanced head makes its semantic direction ``f`` (``train.mapper``), registered in
``nsnet.registry.MAPPERS``; torch-free, so validating params.yaml stays cheap.

* ``end_to_end``  the seed: the mapper is trained by the detection loss and the alignment term
* ``identity``    f = t, the caption embedding itself (no mapper)
* ``detached``    the mapper learns only from the alignment term; the projection uses a
                  stop-gradient f
* ``regression``  a frozen ridge map caption -> image semantics, fit once on the training rows;
                  the projection removes the image's deviation from the mean training image
                  along f
* ``regression_real``    the same, fit on the real (label 0) training rows only
* ``regression_within``  the same, fit within each class (real, fake) on all training rows
"""

from __future__ import annotations

from dataclasses import dataclass

from nsnet.registry import MAPPERS


@dataclass(frozen=True)
class Mapper:
    name: str
    trained: bool = False  # learned by the alignment term (a SemanticMapper)
    fitted: bool = False  # a ridge map fit before training (a LinearSemanticMap)
    fit_on: str = "all"  # fitted ones: all | real | within (per class)
    trains_image_loss: bool = True  # trained ones: False = the projection uses a stop-gradient f


for _m in (Mapper("end_to_end", trained=True), Mapper("identity"),
           Mapper("detached", trained=True, trains_image_loss=False),
           Mapper("regression", fitted=True),
           Mapper("regression_real", fitted=True, fit_on="real"),
           Mapper("regression_within", fitted=True, fit_on="within")):
    MAPPERS.register(_m.name, _m)
