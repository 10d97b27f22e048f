"""Benchmark presets: each paper's training sources, official test rows and real pools.

``protocol.preset`` names one of these. A preset fixes what the paper fixes, so our tables can
be set beside the published ones row for row:

* ``training``: the sources (generator or object-class folders) trained and validated on;
* ``rows``: the official test rows, in the paper's order and with its names. Each row scores the
  fakes of its folder(s) against the reals of the same folder(s) or, when those hold no reals,
  against its named real pool (UniversalFakeDetect's diffusion rows);
* a mean over every row; one over fewer rows is labelled as partial.

Sources (folder names) are matched to rows without regard to case or punctuation
(``FLUX1-dev`` = ``flux1_dev``). Sources from the official sources:

* GenImage (Zhu et al. 2024, github.com/GenImage-Dataset/GenImage, Table 3): train on SD V1.4,
  test on the eight generators' ``val`` folders, each with its own ``nature`` reals.
* UniversalFakeDetect (Ojha et al. 2023, github.com/WisconsinAIVision/UniversalFakeDetect,
  ``dataset_paths.py``): train on all 20 ProGAN classes of CNNDetection's training set; 19 rows.
  The 11 GAN rows use their own ``0_real`` folders (``sitd`` is the folder ``seeingdark``); the
  diffusion rows share two real pools of ``diffusion_datasets``: ``guided`` vs ``imagenet``,
  the other seven vs ``laion``. CNNDetection's test set also ships ``stylegan2`` and
  ``whichfaceisreal``, which are not UFD rows.
* AIGIBench (Li et al. 2025, github.com/HorizonTEL/AIGIBench): Setting-I trains on ProGAN's
  car/cat/chair/horse, Setting-II adds ``sdv1.4``; 25 test subsets, each with its own reals,
  in the order of the benchmark's evaluation configs.

Each preset also carries ``published``: the mean accuracy / AP that papers or official
repositories publish for other methods on that benchmark (``published_results``), each with
its source and whether it used exactly the preset's training set and rows. Only figures read in
the paper's or the official repository's own files are listed (docs/baselines.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from nsnet.registry import PRESETS as PRESET_NAMES

NONE = "none"


@dataclass(frozen=True)
class Row:
    """One official test row: its printed name, the folders of its fakes, its real pool."""

    name: str
    folders: tuple[str, ...]  # sources whose fakes (and own reals, if any) form the row
    real_pool: str | None = None  # source of the shared reals when the folders hold none


@dataclass(frozen=True)
class Published:
    """A published mean over a benchmark's rows for one method (percent; None = not given)."""

    method: str  # our head's name where we have one (univfd, rine, ...), else the paper's
    title: str  # the method as the source prints it
    acc: float | None
    ap: float | None
    source: str  # where the figure is printed: repository@commit file / paper table
    same_protocol: bool  # trained on the preset's training sources, mean over all its rows
    note: str = ""  # who measured it, and how the protocol differs
    real_acc: float | None = None
    fake_acc: float | None = None


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    training: tuple[str, ...]  # training (and validation) sources
    rows: tuple[Row, ...]
    layout: str  # the layout of the distributed trees
    reference: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    published: tuple[Published, ...] = field(default_factory=tuple)

    @property
    def row_names(self) -> list[str]:
        return [r.name for r in self.rows]


def _rows(*names: str) -> tuple[Row, ...]:
    return tuple(Row(n, (n,)) for n in names)


PROGAN_CLASSES = (
    "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
AIGIBENCH_SUBSETS = (
    "BlendFace", "BLIP", "CommunityAI", "DALLE-3", "E4S", "FaceSwap", "FLUX1-dev", "GLIDE",
    "Imagen3", "Infinite-ID", "InstantID", "InSwap", "IP-Adapter", "Midjourney", "PhotoMaker",
    "ProGAN", "R3GAN", "SD3", "SDXL", "SimSwap", "SocialRF", "StyleGAN-XL", "StyleGAN3",
    "StyleSwim", "WFIR",
)
# Folder spellings of the AIGIBench README that differ from the evaluation configs' names.
_AIGIBENCH_ALIASES = {"Midjourney": ("Midjourney-V6",), "InSwap": ("ImSwap",)}
_AIGIBENCH_ROWS = tuple(Row(n, (n, *_AIGIBENCH_ALIASES.get(n, ()))) for n in AIGIBENCH_SUBSETS)

_EFFORT = "YZY-stack/Effort-AIGI-Detection@96f5dea"
_EFFORT_TABLE = (f"{_EFFORT} README.md figs/genimage_tab.png (the paper's GenImage table, "
                 "mAcc column)")
_AIGIB = ("HorizonTEL/AIGIBench@e9b95f8 README.md, 'Detection Results' table (Setting-II, every "
          "method retrained by the AIGIBench authors)")


def _aigib(method: str, title: str, real: float, fake: float, acc: float, ap: float,
           note: str = "") -> Published:
    return Published(method, title, acc, ap, _AIGIB, True, note or "retrained by AIGIBench's "
                     "authors with the method's official code", real, fake)


PUBLISHED: dict[str, tuple[Published, ...]] = {
    "genimage": (
        Published("univfd", "UnivFD (Ojha et al., 2023)", 79.5, None, _EFFORT_TABLE, True,
                  "measured by Effort's authors (Yan et al., ICML 2025)"),
        Published("fatformer", "FatFormer (Liu et al., 2024)", 88.9, None, _EFFORT_TABLE, True,
                  "measured by Effort's authors"),
        Published("drct", "DRCT (Chen et al., 2024)", 89.5, None, _EFFORT_TABLE, True,
                  "measured by Effort's authors"),
        Published("effort", "Effort (Yan et al., ICML 2025)", 91.1, None, _EFFORT_TABLE, True),
    ),
    "ufd": (
        Published("effort", "Effort (Yan et al., ICML 2025)", 95.17, 99.34,
                  f"{_EFFORT} UniversalFakeDetect_Benchmark/results/clip_vitl14_svd/iters_18000/"
                  "acc0.txt and ap.txt ('avg'; README.md: this folder reproduces the paper's "
                  "Table 2)", True, "threshold 0.5; trained with data_mode wang2020 (all 20 "
                  "ProGAN classes, script/train_svd.sh)", 99.19, 91.14),
        Published("rine", "RINE 4-class (Koutlis & Papadopoulos, ECCV 2024)", 91.5, 98.8,
                  "mever-team/rine@9b7fd58 results/grid/ViT-L-14_4_0.2_2_1024_128_0.001_1.pickle "
                  "(the run of the released 4-class configuration; scripts/results.py prints "
                  "the paper's tables from these files, to 1 decimal)", False,
                  "trained on 4 ProGAN classes (car, cat, chair, horse), not 20; mean over 20 "
                  "rows: the UFD rows plus stylegan2"),
        Published("dgs-net", "DGS-Net (Yan et al., ICML 2026)", 99.0, 100.0,
                  "HorizonTEL/DGS-Net@1aed871 log_test.log ('UniversalFakeDetect' Mean; README.md "
                  "points to it, re-inference within about 0.1 of the paper)", False,
                  "mean over the 8 diffusion rows only; trained on AIGIBench Setting-II "
                  "(ProGAN car/cat/chair/horse + SD v1.4)", 99.0, 99.0),
    ),
    "aigibench-1": (),
    "aigibench-2": (
        _aigib("univfd", "UniFD", 73.3, 71.5, 72.5, 75.6),
        _aigib("c2p-clip", "C2P-CLIP*", 93.8, 49.8, 71.8, 82.2,
               "retrained by AIGIBench's authors; the README does not say what * marks"),
        _aigib("aide", "AIDE", 88.1, 67.0, 77.6, 82.7),
        _aigib("effort", "Effort", 96.9, 57.1, 77.1, 87.2),
        _aigib("dgs-net", "DGS-Net", 83.0, 81.5, 82.3, 87.8),
    ),
}

PRESETS: dict[str, Preset] = {
    "genimage": Preset(
        "genimage", "GenImage (train on SD V1.4, test on 8 generators)", ("SDv1.4",),
        tuple(Row(name, (source,)) for name, source in (
            ("Midjourney", "Midjourney"), ("SD V1.4", "SDv1.4"), ("SD V1.5", "SDv1.5"),
            ("ADM", "ADM"), ("GLIDE", "GLIDE"), ("Wukong", "Wukong"), ("VQDM", "VQDM"),
            ("BigGAN", "BigGAN"))),
        "genimage", "Zhu et al. 2024, GenImage README Table 3",
        published=PUBLISHED["genimage"]),
    "ufd": Preset(
        "ufd", "UniversalFakeDetect (train on 20 ProGAN classes, 19 test rows)", PROGAN_CLASSES,
        (*_rows("progan", "cyclegan", "biggan", "stylegan", "gaugan", "stargan", "deepfake"),
         Row("sitd", ("seeingdark",)), *_rows("san", "crn", "imle"),
         Row("guided", ("guided",), "imagenet"),
         *(Row(n, (n,), "laion") for n in ("ldm_200", "ldm_200_cfg", "ldm_100", "glide_100_27",
                                           "glide_50_27", "glide_100_10", "dalle"))),
        "ufd", "Ojha et al. 2023, UniversalFakeDetect dataset_paths.py",
        ("stylegan2 and whichfaceisreal of CNNDetection's test set are not UFD rows",),
        PUBLISHED["ufd"]),
    "aigibench-1": Preset(
        "aigibench-1", "AIGIBench Setting-I (ProGAN car/cat/chair/horse, 25 subsets)",
        ("car", "cat", "chair", "horse"), _AIGIBENCH_ROWS, "aigibench",
        "Li et al. 2025, AIGIBench README and evaluation configs",
        published=PUBLISHED["aigibench-1"]),
    "aigibench-2": Preset(
        "aigibench-2", "AIGIBench Setting-II (ProGAN 4 classes + SD v1.4, 25 subsets)",
        ("car", "cat", "chair", "horse", "sdv1.4"), _AIGIBENCH_ROWS, "aigibench",
        "Li et al. 2025, AIGIBench README and evaluation configs",
        published=PUBLISHED["aigibench-2"]),
}


PRESET_NAMES.register(NONE, None)  # no preset: data.roots and protocol.* decide
for _name, _preset in PRESETS.items():
    PRESET_NAMES.register(_name, _preset)


def source_key(name: str) -> str:
    """Folder names compared without case or punctuation: ``FLUX1-dev`` = ``flux1_dev``."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def get_preset(name: str) -> Preset | None:
    """The preset called ``name``, or None for ``none``."""
    if name == NONE:
        return None
    if name not in PRESET_NAMES:
        raise ValueError(f"unknown protocol.preset {name!r}; choose one of "
                         f"{', '.join(PRESET_NAMES)}")
    return PRESET_NAMES.get(name)


def published_results(preset: str, method: str | None = None) -> list[Published]:
    """Published means on ``preset`` (all methods, or ``method``'s: ``univfd``, ``rine``,
    ``effort``, ...), in the table's order; [] when none could be verified.

    Raises ``ValueError`` for an unknown preset name.
    """
    found = get_preset(preset)
    rows = list(found.published) if found is not None else []
    return [r for r in rows if method is None or r.method == method]


def match_sources(wanted: Iterable[str], known: Iterable[str]) -> tuple[list[str], list[str]]:
    """(known sources matching ``wanted`` in ``wanted``'s order, wanted names not found)."""
    by_key: dict[str, list[str]] = {}
    for s in sorted(set(known)):
        by_key.setdefault(source_key(s), []).append(s)
    found: list[str] = []
    missing: list[str] = []
    for w in wanted:
        hits = by_key.get(source_key(w), [])
        if hits:
            found.extend(h for h in hits if h not in found)
        else:
            missing.append(w)
    return found, missing


def preset_training(preset: Preset, known: Iterable[str]) -> tuple[list[str], list[str]]:
    """(the preset's training sources present in ``known``, those absent)."""
    return match_sources(preset.training, known)
