"""``clip_zero_shot``: CLIP as a zero-shot detector (training-free; a common reference point in
the field since Radford et al. 2021 and Ojha et al. 2023's zero-shot row).

The score is CLIP's own zero-shot logit: ``scale * (cos(x, fake) - cos(x, real))``, with ``x``
the center-crop image embedding (recipe ``clip_crop``, crop 0: UniversalFakeDetect's test crop)
and ``real``/``fake`` the mean normalised text embeddings of the prompts in
``methods.clip_zero_shot`` (``real_prompts``, ``fake_prompts``), encoded once by the CLIP that
made the features. Nothing is trained; fake when the logit > 0 (the bundle's threshold rule may
still calibrate it on the validation rows, as for every head).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nsnet.heads.method import FitInputs, Method, register, training_free
from nsnet.heads.output import HeadOutput


@dataclass
class ZeroShotSettings:
    """``methods.clip_zero_shot``: the prompts of each class and CLIP's logit scale."""

    real_prompts: list[str] = field(default_factory=lambda: [
        "a real photograph", "a photo taken with a camera", "a real photo of a scene"])
    fake_prompts: list[str] = field(default_factory=lambda: [
        "an AI-generated image", "a synthetic image made by a generative model",
        "a computer-generated picture"])
    scale: float = 100.0  # CLIP's logit scale (exp(4.6052) in the released models)


class ClipZeroShot(nn.Module):
    """Cosine of the image embedding with the two class directions (buffers, set by the fit)."""

    def __init__(self, dim: int, scale: float = 100.0, **_: object) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("classes", torch.zeros(2, dim))  # row 0 real, row 1 fake
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> HeadOutput:
        x = F.normalize(x.float(), dim=-1)
        cos = x @ self.classes.T
        return HeadOutput(self.scale * (cos[:, 1] - cos[:, 0]), None, x, prepared=x)


def embed_prompts(model: torch.nn.Module, fit: FitInputs) -> dict[str, Any]:
    """Encode the prompts with the CLIP named by the features' provenance (its text tower)."""
    from nsnet.backbones.clip import load_clip

    settings = METHOD.settings_of(fit.params)
    clip_prov = fit.train.provenance.get("clip") or {}
    arch = clip_prov.get("arch", fit.params.clip.arch)
    pretrained = clip_prov.get("pretrained", fit.params.clip.pretrained)
    clip = load_clip(arch, pretrained, "cpu")
    rows = []
    for prompts in (settings.real_prompts, settings.fake_prompts):
        emb = F.normalize(clip.encode_texts(list(prompts)).float(), dim=-1).mean(dim=0)
        rows.append(F.normalize(emb, dim=-1))
    with torch.no_grad():
        model.classes.copy_(torch.stack(rows))
        model.scale.fill_(settings.scale)
    return {"fitted": {"real_prompts": list(settings.real_prompts),
                       "fake_prompts": list(settings.fake_prompts), "scale": settings.scale,
                       "text_encoder": f"{arch}/{pretrained}"}}


METHOD = register(Method(
    "clip_zero_shot", ClipZeroShot, recipe="clip_crop", schedule=training_free,
    prepare=embed_prompts, settings=ZeroShotSettings,
    title="CLIP zero-shot: cosine with 'real photo' vs 'AI-generated' prompts (training-free)"))
