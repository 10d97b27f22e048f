"""Does each head remove semantics? A controlled shortcut benchmark over synthetic cached features.

The heads only ever see cached (image, caption) feature vectors, so the method's claim, that
projecting the caption's semantics out of the image feature leaves the generator's artifact, can
be checked exactly at that level. This script draws features whose content is known:

* ``rank`` topics, each an orthonormal *caption* direction ``u_k``; a caption is its topic's
  ``u_k`` plus isotropic caption noise (total norm ``caption_noise``);
* the *image* holds ``strength`` x its topic's image direction ``v_k``, where
  ``v_k = alignment u_k + sqrt(1 - alignment^2) u'_k`` (``alignment`` 1: image and caption
  semantics share directions; below 1: CLIP-like modality gap), plus a constant ``offset`` vector
  (another one on the captions: the gap between the two embeddings' centres);
* one artifact direction ``w`` (orthogonal to all semantics): fakes carry ``+delta/2 w``, reals
  ``-delta/2 w``, with ``delta`` set so that the artifact *alone* is ``artifact_acc`` accurate
  under the isotropic image noise (total norm ``noise``): the Bayes ceiling of a detector that
  uses no semantics, printed with the table;
* the shortcut: with probability ``train_shortcut`` a fake's topic is in the first half of the
  topics and a real's in the second half (else the other half); the test sets keep that
  (p = ``train_shortcut``), drop it (p = 0.5: the topic says nothing about the label) or
  reverse it (p = 1 - ``train_shortcut``); ``--test-shortcut`` sets other test columns.

Features go into real ``FeatureSet`` objects and every head is trained with the project's
training loop (``fit`` with ``TrainParams``: the defaults of params.yaml unless overridden) and
scored with ``predict_proba``: ``composite_probe`` (the linear probe), ``nsnet`` with k = 1 and
k = rank, and ``advanced`` with every ``train.mapper``, in a same-space setting (alignment 1,
no offset) and a gap setting.
The table gives accuracy (%, threshold 0.5, balanced test sets), mean +- std over seeds.

    python bench/bench_shortcut.py                    # 3 seeds, ~5 min on one idle CPU thread
    python bench/bench_shortcut.py --seeds 1 --n-train 1000 --epochs 5  # a quick look
    python bench/bench_shortcut.py --heads k=8 end_to_end within --n-train 16000  # more rows

The ceiling is for a detector that sees no semantics; a head that uses the shortcut can beat
it on the in-distribution column and then loses on the reversed one. ``worst`` is the lowest
mean over all test columns: a head that removed the semantics is near the ceiling in every one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from nsnet.config import TrainParams  # noqa: E402
from nsnet.extraction.cached_features import FeatureSet  # noqa: E402
from nsnet.heads.training_loop import fit, predict_proba  # noqa: E402
from nsnet.registry import MAPPERS  # noqa: E402


@dataclass(frozen=True)
class World:
    """The knobs of the synthetic features (module docstring)."""

    dim: int = 128  # feature width
    rank: int = 8  # semantic rank: number of topics (orthonormal caption directions)
    strength: float = 3.0  # image semantic amplitude, in units of the caption's
    artifact_acc: float = 0.8  # Bayes accuracy of the artifact direction alone (the ceiling)
    noise: float = 3.0  # total norm of the isotropic image noise (per-dim std noise/sqrt(dim))
    caption_noise: float = 0.3  # total norm of the isotropic caption noise
    alignment: float = 1.0  # cosine between a topic's caption and image directions
    offset: float = 0.0  # norm of the constant vector added to every image (and caption)
    train_shortcut: float = 0.95  # P(fake shows a first-half topic) = P(real a second-half one)

    @property
    def delta(self) -> float:
        """Distance between the real and fake artifact means that gives ``artifact_acc``."""
        z = statistics.NormalDist().inv_cdf(self.artifact_acc)
        return 2 * z * self.noise / np.sqrt(self.dim)


SPLITS = ("train", "val", "test")


@dataclass
class Geometry:
    caption_dirs: np.ndarray  # (rank, d)
    image_dirs: np.ndarray  # (rank, d)
    artifact: np.ndarray  # (d,)
    caption_offset: np.ndarray  # (d,)
    image_offset: np.ndarray  # (d,)


def geometry(world: World, seed: int) -> Geometry:
    """Random orthonormal directions for one seed: caption topics, their image counterparts'
    orthogonal parts, the artifact and the two offsets (all mutually orthogonal)."""
    k, d = world.rank, world.dim
    if 2 * k + 3 > d:
        raise ValueError(f"dim {d} is too small for rank {k} (needs >= {2 * k + 3})")
    q, _ = np.linalg.qr(np.random.default_rng([seed, 1]).normal(size=(d, 2 * k + 3)))
    u, u_perp = q[:, :k].T, q[:, k:2 * k].T
    a = world.alignment
    return Geometry(u, a * u + np.sqrt(max(0.0, 1 - a * a)) * u_perp, q[:, 2 * k],
                    world.offset * q[:, 2 * k + 1], world.offset * q[:, 2 * k + 2])


def draw(world: World, geo: Geometry, n: int, shortcut: float, seed: int, split: str
         ) -> FeatureSet:
    """``n`` rows (half real, half fake) as a ``FeatureSet`` (frame + float32 tensors).

    ``shortcut``: probability that a fake's topic is in the first half of the topics and a
    real's in the second half."""
    rng = np.random.default_rng([seed, SPLITS.index(split), round(shortcut * 1e6)])
    y = np.arange(n) % 2
    half = world.rank // 2
    first = rng.random(n) < shortcut  # topic from the half that goes with the label
    lo = np.where(first == (y == 1), 0, half)
    hi = np.where(first == (y == 1), half, world.rank)
    topic = rng.integers(lo, hi)
    d = world.dim
    text = geo.caption_dirs[topic] + geo.caption_offset \
        + world.caption_noise / np.sqrt(d) * rng.normal(size=(n, d))
    sign = np.where(y == 1, 0.5, -0.5)[:, None]
    image = world.strength * geo.image_dirs[topic] + geo.image_offset \
        + sign * world.delta * geo.artifact + world.noise / np.sqrt(d) * rng.normal(size=(n, d))
    frame = pd.DataFrame({"id": [f"{split}{i}" for i in range(n)], "label": y,
                          "source": np.where(y == 1, "fake", "real"), "split": split,
                          "path": "", "topic": topic})
    return FeatureSet(frame, torch.from_numpy(image).float(), torch.from_numpy(text).float(),
                      {"synthetic": dataclasses.asdict(world)})


def heads(world: World, only: list[str] | None = None) -> list[tuple[str, str, dict[str, object]]]:
    """(row label, head kind, TrainParams overrides) of every head and mapper variant (those
    whose label contains one of ``only``, when given)."""
    rows: list[tuple[str, str, dict[str, object]]] = [
        ("composite_probe (linear probe)", "composite_probe", {}),
        ("nsnet k=1", "nsnet", {"nsnet_k": 1}),
        (f"nsnet k={world.rank} (= rank)", "nsnet", {"nsnet_k": world.rank}),
    ]
    rows += [(f"advanced mapper={m}", "advanced", {"mapper": m}) for m in MAPPERS]
    return [r for r in rows if not only or any(o in r[0] for o in only)]


def accuracy(y: np.ndarray, prob: np.ndarray) -> float:
    return float(((prob > 0.5).astype(int) == y).mean())


def run(world: World, tp: TrainParams, seed: int, n_train: int, n_val: int, n_test: int,
        test_shortcuts: list[float], only: list[str] | None = None) -> dict[str, list[float]]:
    """One seed: {head label: [test accuracy per test shortcut]} for every head (``heads``)."""
    geo = geometry(world, seed)
    train = draw(world, geo, n_train, world.train_shortcut, seed, "train")
    val = draw(world, geo, n_val, world.train_shortcut, seed, "val")
    tests = [draw(world, geo, n_test, p, seed, "test") for p in test_shortcuts]
    out = {}
    for label, kind, overrides in heads(world, only):
        model = fit(kind, train, val, dataclasses.replace(tp, seed=seed, **overrides)).model
        out[label] = [accuracy(te.frame["label"].to_numpy(),
                               predict_proba(model, te.image, te.text)) for te in tests]
    return out


def settings(args: argparse.Namespace) -> dict[str, World]:
    base = World(dim=args.dim, rank=args.rank, strength=args.strength,
                 artifact_acc=args.artifact_acc, noise=args.noise,
                 caption_noise=args.caption_noise, train_shortcut=args.train_shortcut)
    return {"same space": base,
            "gap": dataclasses.replace(base, alignment=args.alignment, offset=args.offset)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    w = World()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="generator (and training) seeds")
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-val", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=4000, help="rows per test set")
    ap.add_argument("--dim", type=int, default=w.dim)
    ap.add_argument("--rank", type=int, default=w.rank, help="semantic rank (topics, even)")
    ap.add_argument("--strength", type=float, default=w.strength)
    ap.add_argument("--artifact-acc", type=float, default=w.artifact_acc)
    ap.add_argument("--noise", type=float, default=w.noise)
    ap.add_argument("--caption-noise", type=float, default=w.caption_noise)
    ap.add_argument("--train-shortcut", type=float, default=w.train_shortcut)
    ap.add_argument("--test-shortcut", type=float, nargs="+", default=None,
                    help="test columns (default: the train shortcut, 0.5 and its reverse)")
    ap.add_argument("--alignment", type=float, default=0.3, help="gap setting's alignment")
    ap.add_argument("--offset", type=float, default=1.0, help="gap setting's offset norm")
    ap.add_argument("--epochs", type=int, default=TrainParams().epochs)
    ap.add_argument("--heads", nargs="+", default=None,
                    help="only the rows whose label contains one of these, e.g. nsnet within")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (pinned)")
    args = ap.parse_args(argv)
    if args.rank < 2 or args.rank % 2:
        ap.error("--rank must be an even number >= 2 (two halves of topics)")
    for name in ("artifact_acc", "train_shortcut"):
        if not 0.5 <= getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be in [0.5, 1)")
    if not 0 <= args.alignment <= 1:
        ap.error("--alignment must be in [0, 1]")
    for name in ("seeds", "n_train", "n_val", "n_test", "epochs", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("strength", "noise", "caption_noise", "offset"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.noise == 0:
        ap.error("--noise must be > 0 (the artifact's accuracy is set against it)")
    if any(not 0 <= p <= 1 for p in args.test_shortcut or []):
        ap.error("--test-shortcut values must be in [0, 1]")
    return args


def _cell(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[list[float]]]]:
    """Print the table; return {setting: {head: [[acc per test column] per seed]}}."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tests = args.test_shortcut or [args.train_shortcut, 0.5, 1 - args.train_shortcut]
    tp = dataclasses.replace(TrainParams(), epochs=args.epochs, device="cpu")
    worlds = settings(args)
    load = os.getloadavg()
    print(f"# shortcut benchmark: {args.seeds} seed(s), {args.n_train} train / {args.n_val} val "
          f"/ {args.n_test} test rows per set, d={args.dim}, rank={args.rank}; "
          f"{torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPUs, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    for name, w in worlds.items():
        print(f"#   {name}: {dataclasses.asdict(w)}")
    results: dict[str, dict[str, list[list[float]]]] = {}
    t0 = time.perf_counter()
    for name, w in worlds.items():
        per_head: dict[str, list[list[float]]] = {}
        for seed in range(args.seeds):
            for label, accs in run(w, tp, seed, args.n_train, args.n_val, args.n_test,
                                   tests, args.heads).items():
                per_head.setdefault(label, []).append(accs)
        results[name] = per_head
    cols = [f"{name} p={p:g}" for name in worlds for p in tests]
    print(f"\nTest accuracy (%), mean ± std over {args.seeds} seed(s); p = P(the topic goes "
          f"with the label as in training at p={args.train_shortcut:g}). Ceiling (artifact "
          f"alone, Bayes): {100 * args.artifact_acc:.1f}\n")
    print("| head | " + " | ".join(cols) + " | worst |")
    print("| --- |" + " ---: |" * (len(cols) + 1))
    for label in results[next(iter(worlds))]:
        columns = [[seed[j] for seed in results[name][label]]
                   for name in worlds for j in range(len(tests))]
        worst = 100 * min(statistics.fmean(c) for c in columns)
        print(f"| {label} | " + " | ".join(_cell(c) for c in columns) + f" | {worst:.1f} |")
    print("| ceiling (artifact alone) |" + f" {100 * args.artifact_acc:.1f} |" * (len(cols) + 1))
    print(f"\n# {time.perf_counter() - t0:.0f} s; load average after: "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return results


if __name__ == "__main__":
    main()
