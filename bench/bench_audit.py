"""What one image costs the shortcut audit: header-only reads vs a full decode.

`nsnet audit` must scale to millions of images (GenImage: 2.6 M), so it reads only file
headers (``PIL.Image.open`` parses markers/chunks; pixels are never decoded). This script
writes N JPEG and N PNG files of a given size, then times per image (page cache warm):

* ``header_row`` (what the audit does: format, size, mode, JPEG quality from the
  quantisation tables, EXIF/ICC presence),
* a full decode with ``nsnet.data.images.open_image`` (what ``nsnet index`` already does).

    python bench/bench_audit.py [--n 200 --size 1024]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from nsnet.data.audit import header_row
from nsnet.data.images import open_image


def _write(folder: Path, n: int, size: int, fmt: str, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        path = folder / f"{i:05d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        img.save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        paths.append(str(path))
    return paths


def _per_image(fn, paths: list[str]) -> float:
    fn(paths[0])  # warm-up
    t0 = time.perf_counter()
    for p in paths:
        fn(p)
    return (time.perf_counter() - t0) / len(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    print(f"{args.n} images per format, {args.size} x {args.size} px, one process\n")
    print("| format | header only (audit) ms/img | full decode (index) ms/img | ratio | "
          "audit img/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("JPEG", "PNG"):
            folder = Path(tmp) / fmt
            folder.mkdir()
            paths = _write(folder, args.n, args.size, fmt)
            head = _per_image(header_row, paths)
            full = _per_image(open_image, paths)
            print(f"| {fmt} | {1e3 * head:.3f} | {1e3 * full:.2f} | {full / head:.0f}x | "
                  f"{1 / head:,.0f} |")


if __name__ == "__main__":
    main()
