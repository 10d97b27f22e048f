"""The built-in demo: a small real-vs-"generated" image set made offline, and its workspace.

Real images are crops of the photographs that ship with scikit-image. "Generated" images are
*simulations*: other crops of the same photographs, downsampled 2x and re-upsampled through
three distinct generator up-sampling paths (in the spirit of AutoGAN, Zhang et al. 2019):

* ``tconv``     transposed convolution, stride 2, kernel 4 (checkerboard artifacts)
* ``nn_conv``   nearest-neighbour up-sampling followed by a 3x3 convolution
* ``bilinear``  bilinear up-sampling followed by a 3x3 convolution

Training on one family and testing on the others shows the cross-generator problem. This is a
simulation to exercise the pipeline, not a real-world benchmark.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nsnet.data.params_text import edit_params_text

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "motorcycle_left",
          "immunohistochemistry", "retina", "cat", "color")
GENERATORS = ("tconv", "nn_conv", "bilinear")
# The built-in random backbones (no download): what the demo and the tests must change.
TINY_MODELS = {"clip.arch": "tiny", "clip.pretrained": "", "caption.model": "tiny",
               "recipes.cozzolino_arch": "tiny", "recipes.cozzolino_pretrained": ""}
# The demo workspace is the project's params.yaml with only these values changed: the tiny
# models, the demo data, the demo's protocol (train on real + tconv, test on all three
# generators, three degradations, a decision threshold and calibration fit on validation) and
# every head side by side in `nsnet compare`, each on its own recipe, from one extraction
# (2 augmented crops per training image for univfd instead of 8, to keep the demo short).
DEMO_VALUES = {
    **TINY_MODELS,
    "data.roots": ["data/demo"],
    "protocol.train_sources": ["real", "tconv"],
    "protocol.degradations": ["jpeg30", "resize64", "blur3"],
    "evaluate.threshold": "val_acc",
    "evaluate.calibration": "platt",
    "compare.heads": ["composite_probe", "nsnet", "advanced", "univfd", "rine", "cozzolino"],
    "recipes.crop_augmentations": 2,
}


def _photos() -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in PHOTOS:
        loader = getattr(data, name, None)
        if loader is None:
            continue
        try:
            img = np.asarray(loader())
        except Exception:  # noqa: BLE001 - some samples need a download; skip them offline
            continue
        if img.ndim == 3 and img.shape[2] >= 3 and min(img.shape[:2]) >= 256:
            out.append(img[:, :, :3].astype(np.uint8))
    if not out:
        raise RuntimeError("no scikit-image sample photographs could be loaded")
    return out


def _crop(rng: np.random.Generator, photos: list[np.ndarray], size: int) -> np.ndarray:
    img = photos[rng.integers(len(photos))]
    y = rng.integers(0, img.shape[0] - size + 1)
    x = rng.integers(0, img.shape[1] - size + 1)
    crop = img[y:y + size, x:x + size]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def _kernel(gen: torch.Generator, k: int) -> torch.Tensor:
    """A fixed random low-pass-ish kernel (positive, sums to 1), shared by all channels."""
    w = torch.rand(k, k, generator=gen) + 0.5
    return (w / w.sum()).expand(3, 1, k, k).contiguous()


def _upsamplers(seed: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    k_t = _kernel(gen, 4) * 4.0  # stride-2 transposed conv: each output sums 4 taps of 16
    k_nn = _kernel(gen, 3)
    k_bl = _kernel(gen, 3)
    return {
        "tconv": lambda x: F.conv_transpose2d(x, k_t, stride=2, padding=1, groups=3),
        "nn_conv": lambda x: F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"),
                                      k_nn, padding=1, groups=3),
        "bilinear": lambda x: F.conv2d(F.interpolate(x, scale_factor=2, mode="bilinear",
                                                     align_corners=False), k_bl, padding=1,
                                       groups=3),
    }


def simulate(real: np.ndarray, upsample: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """Downsample 2x (area) then re-upsample through a generator path; uint8 out."""
    x = torch.from_numpy(real).permute(2, 0, 1)[None].float() / 255.0
    low = F.avg_pool2d(x, 2)
    up = upsample(low)[..., : real.shape[0], : real.shape[1]]
    return (up.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def make_demo_images(out: str | Path, n_real: int = 240, n_fake_each: int = 160,
                     size: int = 256, seed: int = 0) -> dict[str, int]:
    """Write ``out/real/*.png`` and ``out/fake/<generator>/*.png``; return counts."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    rng = np.random.default_rng(seed)
    photos = _photos()
    (out / "real").mkdir(parents=True)
    for i in range(n_real):
        Image.fromarray(_crop(rng, photos, size)).save(out / "real" / f"real_{i:04d}.png")
    counts = {"real": n_real}
    for name, up in _upsamplers(seed).items():
        folder = out / "fake" / name
        folder.mkdir(parents=True)
        for i in range(n_fake_each):
            fake = simulate(_crop(rng, photos, size), up)
            Image.fromarray(fake).save(folder / f"{name}_{i:04d}.png")
        counts[name] = n_fake_each
    (out / "README.txt").write_text(__doc__ or "")
    return counts


CODE_DIRS = ("pipeline", "stages")  # dvc.yaml's stages depend on the code they run
IMPORT_NAMES = {"nsnet": "pipeline", "nsnet/stages": "stages"}  # as setup.py installs them
IMPORT_DIR = ".nsnet-import"  # a copy's import path: PYTHONPATH=<workspace>/.nsnet-import
DVCIGNORE = "# compiled Python changes when code runs: not a dependency\n__pycache__/\n*.pyc\n"


def _import_tree(workspace: Path) -> None:
    """``IMPORT_DIR/nsnet``: relative symlinks to the copy's modules and folders, and
    ``nsnet/stages`` to its ``stages/``, so ``import nsnet`` runs the copy."""
    top = workspace / IMPORT_DIR
    for name, folder in IMPORT_NAMES.items():
        (top / name).mkdir(parents=True, exist_ok=True)
        for entry in sorted((workspace / folder).iterdir()):
            link = top / name / entry.name
            if entry.name != "__pycache__" and not link.exists():
                link.symlink_to(os.path.relpath(entry, link.parent))


def make_workspace(workspace: str | Path, project: str | Path, code: str = "link",
                   params: str | None = None, values: dict[str, Any] | None = None,
                   **image_kw: int) -> Path:
    """A self-contained DVC workspace: the project's dvc.yaml, demo params, demo images.

    ``code="link"`` symlinks the project's ``pipeline/`` and ``stages/`` into the workspace
    (the code deps of dvc.yaml, and the code the installed ``nsnet`` runs); ``code="copy"``
    copies them, so a test can edit the copy and run it without touching the project: the
    copy is importable as ``nsnet`` with ``IMPORT_DIR`` first on ``PYTHONPATH`` (relative
    symlinks into the copy, laid out as the wheel installs it).
    The workspace's ``params.yaml`` is ``params`` (the text of a params file; default: the
    project's own ``params.yaml``) with ``values`` (default ``DEMO_VALUES``; dotted keys)
    set, its comments kept.
    """
    workspace, project = Path(workspace).absolute(), Path(project).absolute()
    workspace.mkdir(parents=True, exist_ok=True)
    shutil.copy2(project / "dvc.yaml", workspace / "dvc.yaml")
    (workspace / ".dvcignore").write_text(DVCIGNORE)
    for name in CODE_DIRS:
        if code == "link":
            (workspace / name).symlink_to(project / name, target_is_directory=True)
        elif code == "copy":
            shutil.copytree(project / name, workspace / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            raise ValueError(f"code must be 'link' or 'copy', not {code!r}")
    if code == "copy":
        _import_tree(workspace)
    values = DEMO_VALUES if values is None else values
    text = (project / "params.yaml").read_text() if params is None else params
    changed = ", ".join(values)
    (workspace / "params.yaml").write_text(
        f"# The demo: the project's params.yaml with these values changed: {changed}.\n"
        + edit_params_text(text, values))
    # metrics/ and plots/ (cache: false) stay in git so `dvc exp run` commits them and
    # `dvc exp show` / `dvc metrics diff` can compare experiments. data/ is not ignored here:
    # `dvc add data/demo` tracks the images (data/demo.dvc in git, the files in DVC's cache)
    # so that `dvc exp run --queue/--temp` workspaces and clones have them.
    (workspace / ".gitignore").write_text("/models/\n/dvc_plots/\n__pycache__/\n")
    (workspace / "cache").mkdir(exist_ok=True)
    shutil.copy2(project / "cache" / ".gitignore", workspace / "cache" / ".gitignore")
    make_demo_images(workspace / "data" / "demo", **image_kw)
    return workspace
