"""Time of one training epoch of the Advanced NS-Net head, ours vs the public code's loops.

Prints a Markdown table (and ratios) for one epoch over N cached (image, caption) features:

1. **ours**: ``nsnet.heads.training_loop.fit`` for one epoch (batched O(d) rank-1
   projection, features in memory, no CLIP);
2. **per-sample d x d**: the authors' notebook form, the same mapper, head, loss and optimiser,
   but ``P_i = I - f_i f_i^T / ||f_i||^2`` built as a d x d matrix per sample in a Python loop;
3. **CLIP every step**: the public code's loop, which re-encodes the frozen CLIP image and
   caption on every step (here the built-in tiny CLIP: 2-layer towers, 128-d, so a strong
   *lower bound* on ViT-L/14's cost; image loading and patch selection are not counted either).

The slow baselines are timed on ``--slow-steps`` steps (after one warm-up step) and
extrapolated to a whole epoch of N // batch steps; the table says so. Features are random
(timing only), float32 in RAM like ``load_features``' in-memory path.

    python bench/bench_heads.py                     # 144,000 x 768 (AIGIBench Setting-I)
    python bench/bench_heads.py --n 20000 --d 768   # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from nsnet.backbones.clip import load_clip, resolve_device  # noqa: E402
from nsnet.config import TrainParams  # noqa: E402
from nsnet.extraction.cached_features import FeatureSet  # noqa: E402
from nsnet.heads.detectors import AdvancedNSNet, HeadOutput  # noqa: E402
from nsnet.heads.method import build_head  # noqa: E402
from nsnet.heads.training_loop import HPARAM_KEYS, fit, head_loss  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=144_000, help="cached training features")
    ap.add_argument("--d", type=int, default=768, help="feature dimension (ViT-L/14: 768)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--slow-steps", type=int, default=3,
                    help="steps timed for each slow baseline (extrapolated to an epoch)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0 = torch's default; 1 on a busy shared machine)")
    return ap.parse_args(argv)


def synthetic_cache(n: int, d: int, seed: int) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    frame = pd.DataFrame({"id": np.arange(n).astype(str), "label": np.arange(n) % 2,
                          "source": "bench", "split": "train", "path": ""})
    return FeatureSet(frame, torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), {})


def dxd_forward(model: AdvancedNSNet, x: torch.Tensor, t: torch.Tensor) -> HeadOutput:
    """The notebook's per-sample projection: an explicit d x d P_i for every sample."""
    x = model.prepare(x)
    f = model.mapper(model.prepare(t))
    eye = torch.eye(x.shape[1], device=x.device)
    rows = []
    for i in range(len(x)):
        p_i = eye - torch.outer(f[i], f[i]) / (f[i] @ f[i])
        rows.append(x[i] @ p_i)
    xp = torch.stack(rows)
    logit, emb = model.head(xp)
    return HeadOutput(logit, emb, xp, f, prepared=x)


def time_steps(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds per step: one warm-up step, then the mean of ``steps`` timed steps."""
    step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, tp: TrainParams,
               forward: Callable[[], tuple[HeadOutput, torch.Tensor, torch.Tensor]]) -> None:
    out, x, y = forward()
    loss = head_loss("advanced", out, y, x, tp)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def bench_dxd(fs: FeatureSet, tp: TrainParams, steps: int, device: torch.device) -> float:
    torch.manual_seed(tp.seed)
    model = build_head("advanced", fs.image.shape[1],
                       **{k: getattr(tp, k) for k in HPARAM_KEYS}).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=tp.lr)
    idx = torch.randperm(len(fs))[:tp.batch_size]
    x, t = fs.image[idx].to(device), fs.text[idx].to(device)
    y = fs.labels[idx].to(device)
    return time_steps(lambda: train_step(model, opt, tp, lambda: (dxd_forward(model, x, t), x, y)),
                      steps, device)


def bench_clip(tp: TrainParams, steps: int, device: torch.device) -> tuple[float, int]:
    clip = load_clip("tiny", "", str(device))
    torch.manual_seed(tp.seed)
    model = build_head("advanced", clip.embed_dim,
                       **{k: getattr(tp, k) for k in HPARAM_KEYS}).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=tp.lr)
    rng = np.random.default_rng(tp.seed)
    size = clip.image_size
    composites = rng.integers(0, 256, size=(tp.batch_size, size, size, 3), dtype=np.uint8)
    words = ["a", "photo", "of", "cat", "car", "chair", "horse", "on", "the", "grass", "red"]
    captions = [" ".join(rng.choice(words, size=8)) for _ in range(tp.batch_size)]
    y = (torch.arange(tp.batch_size) % 2).to(device)

    def forward() -> tuple[HeadOutput, torch.Tensor, torch.Tensor]:
        x = clip.encode_images(composites).clone()  # frozen CLIP, recomputed every step
        t = clip.encode_texts(captions).clone()
        return model(x, t), x, y

    return time_steps(lambda: train_step(model, opt, tp, forward), steps, device), clip.embed_dim


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    tp = dataclasses.replace(TrainParams(), epochs=1, batch_size=args.batch_size,
                             device=str(device), seed=args.seed)
    steps_per_epoch = args.n // args.batch_size
    fs = synthetic_cache(args.n, args.d, args.seed)
    print(f"# one epoch of the advanced head: N={args.n:,} x d={args.d}, batch "
          f"{args.batch_size} ({steps_per_epoch} steps), device {device}, "
          f"{torch.get_num_threads()} torch threads", flush=True)

    t0 = time.perf_counter()
    res = fit("advanced", fs, None, tp)
    ours_epoch = res.history[0]["epoch_seconds"]
    ours_total = time.perf_counter() - t0
    print(f"ours: {ours_epoch:.2f} s/epoch ({ours_total:.2f} s with setup)", flush=True)

    dxd_step = bench_dxd(fs, tp, args.slow_steps, device)
    print(f"per-sample d x d: {dxd_step:.3f} s/step", flush=True)
    clip_step, clip_dim = bench_clip(tp, args.slow_steps, device)
    print(f"tiny CLIP every step: {clip_step:.3f} s/step", flush=True)

    rows = [
        ("ours: `nsnet.heads.training_loop.fit`, batched O(d) projection over the cache",
         f"whole epoch ({steps_per_epoch} steps)", ours_epoch / max(steps_per_epoch, 1),
         ours_epoch),
        ("per-sample d x d P_i in a Python loop (authors' notebook)",
         f"{args.slow_steps} steps, extrapolated", dxd_step, dxd_step * steps_per_epoch),
        (f"tiny CLIP forward every step (public code; {clip_dim}-d, lower bound for ViT-L/14)",
         f"{args.slow_steps} steps, extrapolated", clip_step, clip_step * steps_per_epoch),
    ]
    print()
    print("| method | timed on | s / step | s / epoch | x ours |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, how, per_step, epoch in rows:
        print(f"| {name} | {how} | {per_step:.4f} | {epoch:,.1f} | {epoch / ours_epoch:,.1f} |")


if __name__ == "__main__":
    main()
