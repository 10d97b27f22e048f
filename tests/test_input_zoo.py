"""A zoo of real files of every kind through the real `nsnet index`, `predict` and `explain`.

Formats we decode and formats we don't, damaged files (truncated, CRC-damaged, corrupt EXIF,
NaN pixels), odd modes (16-bit, CMYK, palette + alpha, LA, float, animated), pixel bombs, zero
bytes, text named .jpg, non-UTF-8 names, dangling and looping symlinks, a folder named like an
image, an unreadable file and an unlistable folder (capabilities dropped, since CI runs as root),
hidden files and files outside any label folder. Every file must be accounted for, with a
reason when it is not scored, and no command may print a traceback.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nsnet.data.index_stage import read_skipped
from nsnet.data.manifest import read_manifest
from nsnet.heads.train_stage import run_train
from tests.conftest import tiny_raw, write_params
from tests.test_bad_images import _nsnet

RNG = np.random.default_rng(12)
NON_UTF8 = b"caf\xe9-\xff.png"  # Latin-1 bytes: not valid UTF-8


def noise(h: int = 64, w: int = 64, c: int = 3) -> np.ndarray:
    shape = (h, w, c) if c > 1 else (h, w)
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int) -> bytes:
    """A valid PNG header claiming side x side pixels, with a tiny body."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


def crc_damaged_png() -> bytes:
    """Pixels intact, IDAT's stored CRC wrong: Pillow decodes it, the checksum says damaged."""
    data = bytearray(encode(Image.fromarray(noise()), "PNG"))
    at = data.find(b"IDAT")
    (length,) = struct.unpack(">I", data[at - 4:at])
    data[at + 4 + length] ^= 0xFF
    return bytes(data)


def corrupt_exif_jpeg() -> bytes:
    """A JPEG whose EXIF block is cut short: decodes, with a Pillow warning."""
    jpeg = encode(Image.fromarray(noise()), "JPEG")
    exif = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06"
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + jpeg[2:]


def animated_gif() -> bytes:
    frames = [Image.fromarray(noise()).convert("P") for _ in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def palette_alpha_png() -> bytes:
    img = Image.fromarray(noise()).convert("P")
    return encode(img, "PNG", transparency=0)


def cut(data: bytes, keep: float = 0.4) -> bytes:
    return data[: int(len(data) * keep)]


# name (relative to the root) -> (bytes, status expected from index and predict)
def zoo_files() -> dict[str, tuple[bytes, str]]:
    rgb = Image.fromarray(noise())
    return {
        # formats we decode
        "real/plain.png": (encode(rgb, "PNG"), "ok"),
        "real/photo.jpg": (encode(Image.fromarray(noise()), "JPEG", quality=90), "ok"),
        "real/photo.webp": (encode(Image.fromarray(noise()), "WEBP"), "ok"),
        "real/photo.bmp": (encode(Image.fromarray(noise()), "BMP"), "ok"),
        "real/photo.tiff": (encode(Image.fromarray(noise()), "TIFF"), "ok"),
        "real/photo.ppm": (encode(Image.fromarray(noise()), "PPM"), "ok"),
        "real/UPPER.JPEG": (encode(Image.fromarray(noise()), "JPEG"), "ok"),
        "real/gray16.png": (encode(Image.fromarray(noise(c=1).astype(np.uint16) * 257), "PNG"),
                            "ok"),
        "real/gray.png": (encode(Image.fromarray(noise(c=1), "L"), "PNG"), "ok"),
        "real/cmyk.jpg": (encode(Image.fromarray(noise(c=4), "CMYK"), "JPEG"), "ok"),
        "real/palette_alpha.png": (palette_alpha_png(), "ok"),
        "real/la.png": (encode(Image.fromarray(noise(c=1), "L").convert("LA"), "PNG"), "ok"),
        "real/float.tif": (encode(Image.fromarray(noise(c=1).astype(np.float32), "F"), "TIFF"),
                           "ok"),
        "fake/gen/animated.gif": (animated_gif(), "ok"),
        "fake/gen/rgba.png": (encode(Image.fromarray(noise(c=4), "RGBA"), "PNG"), "ok"),
        "fake/gen/bad_exif.jpg": (corrupt_exif_jpeg(), "ok"),
        "fake/gen/" + os.fsdecode(NON_UTF8): (encode(Image.fromarray(noise()), "PNG"), "ok"),
        "fake/gen/looks.png/inside.png": (encode(Image.fromarray(noise()), "PNG"), "ok"),
        # damaged or unusable
        "real/empty.png": (b"", "empty_file"),
        "real/html.jpg": (b"<html><body>404 Not Found</body></html>", "not_an_image"),
        "real/truncated.jpg": (cut(encode(Image.fromarray(noise(256, 256)), "JPEG")),
                               "corrupt"),
        "real/truncated.png": (cut(encode(Image.fromarray(noise(256, 256)), "PNG")), "corrupt"),
        "fake/gen/crc.png": (crc_damaged_png(), "corrupt"),
        "fake/gen/nan.tif": (encode(Image.fromarray(np.full((40, 40), np.nan, np.float32), "F"),
                                    "TIFF"), "corrupt"),
        "fake/gen/bomb.png": (bomb_png(60_000), "too_large"),
        "fake/gen/tiny.png": (encode(Image.fromarray(noise(8, 8)), "PNG"), "too_small"),
        "fake/gen/wide_thin.png": (encode(Image.fromarray(noise(16, 400)), "PNG"), "too_small"),
        # formats we do not decode
        "real/photo.heic": (b"\x00\x00\x00\x18ftypheic" + bytes(64), "unsupported_format"),
        "real/vector.svg": (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "unsupported_format"),
        "real/notes.txt": (b"shot on a phone", "unsupported_format"),
        "real/README": (b"no extension", "unsupported_format"),
        "real/.DS_Store": (bytes(16), "unsupported_format"),
        "fake/gen/photo.png.part": (encode(rgb, "PNG"), "unsupported_format"),
    }


def build_zoo(root: Path) -> dict[str, str]:
    """Write the zoo under ``root``; return relative name -> expected status."""
    expected = {}
    for name, (data, status) in zoo_files().items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[name] = status
    (root / "fake/gen/dangling.png").symlink_to(root / "nowhere.png")
    expected["fake/gen/dangling.png"] = "missing"
    (root / "real/loop_a.png").symlink_to(root / "real/loop_b.png")
    (root / "real/loop_b.png").symlink_to(root / "real/loop_a.png")
    expected["real/loop_a.png"] = expected["real/loop_b.png"] = "unreadable"
    (root / "real/ok_link.png").symlink_to(root / "real/plain.png")  # same bytes: a duplicate
    expected["real/ok_link.png"] = "ok"
    locked = root / "fake/gen/locked.png"
    locked.write_bytes(encode(Image.fromarray(noise()), "PNG"))
    locked.chmod(0)
    expected["fake/gen/locked.png"] = "unreadable"
    private = root / "real/private"
    private.mkdir()
    (private / "inside.png").write_bytes(encode(Image.fromarray(noise()), "PNG"))
    private.chmod(0)
    expected["real/private"] = "unreadable"  # a folder that cannot be listed
    (root / "loose.png").write_bytes(encode(Image.fromarray(noise()), "PNG"))  # no label folder
    expected["loose.png"] = "ok"  # predict scores it; index reports it as unlabelled
    return expected


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    workdir = tmp_path_factory.mktemp("zoo")
    root = workdir / "data"
    expected = build_zoo(root)
    write_params(workdir / "params.yaml", tiny_raw(root))
    yield workdir, expected
    (root / "fake/gen/locked.png").chmod(0o644)
    (root / "real/private").chmod(0o755)


@pytest.fixture(scope="module")
def bundle(built_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zoo_model") / "model"
    params = dataclasses.replace(built_cache.params, train=dataclasses.replace(
        built_cache.params.train, epochs=3, device="cpu"))
    run_train(params, built_cache.manifest, built_cache.features, out, out.parent / "log.csv")
    return out


def run_cli(args: list[str], cwd: Path):
    drop = os.geteuid() == 0
    proc = _nsnet(args, cwd, drop)
    if drop and "PR_CAPBSET_DROP" in proc.stderr:
        pytest.skip("running as root and capabilities cannot be dropped here")
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc


def expected_display(expected: dict[str, str]) -> dict[str, str]:
    return {os.fsencode(k).decode("utf-8", "backslashreplace"): v for k, v in expected.items()}


def test_index_accounts_for_every_file(zoo):
    workdir, expected = zoo
    proc = run_cli(["index"], workdir)
    assert proc.returncode == 0, proc.stderr
    df = read_manifest(workdir / "cache/manifest.parquet")  # images and their copies
    skipped = read_skipped(workdir / "cache/index_report.json")  # with the unusable files
    got = {os.path.relpath(p, workdir / "data"): s
           for p, s in zip(skipped["path"], skipped["status"], strict=True)}
    got.update({p.decode("utf-8", "backslashreplace"): s
                for p, s in zip(df["relpath"], df["status"], strict=True)})
    want = expected_display(expected)
    want["real/plain.png"] = "duplicate"  # same bytes as the symlink ok_link.png (sorts first)
    assert got == {k: v for k, v in want.items() if k not in ("loose.png", "real/private")}
    assert set(df["status"]) == {"ok", "duplicate"}
    assert skipped["error"].str.len().gt(0).all()
    report = json.loads((workdir / "cache/index_report.json").read_text())
    assert [Path(p).name for p in report["unlabelled"]] == ["loose.png"]
    assert "not indexed (outside any real/fake label folder): 1 file(s), e.g. " in proc.stderr
    assert "loose.png" in proc.stderr
    assert "unlisted_folder: " in proc.stderr and "real/private" in proc.stderr
    assert json.loads((workdir / "cache/index_report.json").read_text())["summary"][
        "unlisted_folders"] == 1
    for reason in ("unsupported_format", "corrupt", "missing", "unreadable", "too_large"):
        assert f"{reason}: " in proc.stderr
    # the decoder warning says which file caused it
    assert "warning: " in proc.stderr and "bad_exif.jpg: UserWarning" in proc.stderr
    assert "caf\\xe9-\\xff.png" in df["path"].str.cat(sep=" ")
    extract = run_cli(["extract"], workdir)  # decodes the usable files again
    assert extract.returncode == 0, extract.stderr
    assert "bad_exif.jpg: UserWarning: Corrupt EXIF" in extract.stderr


@pytest.mark.parametrize("fmt", [".csv", ".jsonl", ".parquet"])
def test_predict_accounts_for_every_file(zoo, bundle, tmp_path, fmt):
    workdir, expected = zoo
    out = tmp_path / f"results{fmt}"
    proc = run_cli(["predict", "data", "--model", str(bundle), "--out", str(out)], workdir)
    assert proc.returncode == 0, proc.stderr
    df = {".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True),
          ".parquet": pd.read_parquet}[fmt](out)
    got = {os.path.relpath(p, "data"): s for p, s in zip(df["path"], df["status"], strict=True)}
    assert got == expected_display(expected)
    scored = df[df["status"] == "ok"]
    assert scored["prob"].between(0, 1).all()
    assert set(scored["label"]) <= {"generated", "real", "uncertain"}
    assert df.loc[df["status"] != "ok", "error"].str.len().gt(0).all()
    n_ok = sum(s == "ok" for s in expected.values())
    assert f"predict: {n_ok} scored" in proc.stderr
    assert f"{len(expected) - n_ok} skipped" in proc.stderr
    if fmt == ".csv":  # the terminal table lists every file too
        assert "[unsupported_format]" in proc.stdout and "caf\\xe9-\\xff.png" in proc.stdout
        assert "dangling symlink" in proc.stdout


def test_explain_on_a_non_utf8_name_and_a_bad_file(zoo, bundle, tmp_path):
    workdir, _ = zoo
    image = os.path.join(b"data/fake/gen", NON_UTF8)
    out = tmp_path / "report.png"
    proc = run_cli(["explain", os.fsdecode(image), "--model", str(bundle), "--out", str(out)],
                   workdir)
    assert proc.returncode == 0, proc.stderr
    assert "caf\\xe9-\\xff.png: P(generated)" in proc.stdout
    assert json.loads(out.with_suffix(".json").read_text())["path"].endswith("caf\\xe9-\\xff.png")
    for name, reason in (("crc.png", "corrupt"), ("photo.png.part", "unsupported_format")):
        proc = run_cli(["explain", f"data/fake/gen/{name}", "--model", str(bundle)], workdir)
        assert proc.returncode == 1 and reason in proc.stderr and name in proc.stderr
