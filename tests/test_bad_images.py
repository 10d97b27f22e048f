"""Bad input from scraped folders: every case is a real file made here, decoded by the real code.

Readable images must come out as correct RGB (mode conversion, EXIF orientation); unreadable ones
must be recorded in the index report with a reason, left out of the manifest (so downstream),
and printed; ``--strict`` turns any skip into an error.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from nsnet.cache_store import decode_ids
from nsnet.config import load_params
from nsnet.data.images import ImageError, open_image
from nsnet.data.index_stage import build_index, read_skipped
from nsnet.data.manifest import file_paths, read_manifest
from nsnet.extraction.extract_stage import run_extract
from nsnet.stages.cli import main
from tests.conftest import part_of, tiny_params, tiny_raw, write_params

RNG = np.random.default_rng(7)


def noise(h: int = 64, w: int = 64) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, img: Image.Image, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)
    return path


def reason(path: Path | bytes, **kw) -> str:
    with pytest.raises(ImageError) as err:
        open_image(path, **kw)
    return err.value.reason


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    """A PNG file assembled chunk by chunk (lets us write headers PIL would not)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- unreadable


def test_zero_byte_file(tmp_path):
    f = tmp_path / "empty.jpg"
    f.write_bytes(b"")
    assert reason(f) == "empty_file"


def test_truncated_jpeg(tmp_path):
    whole = save(tmp_path / "whole.jpg", Image.fromarray(noise(128, 128)), quality=90)
    data = whole.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    assert open_image(whole)[0].shape == (128, 128, 3)
    assert reason(cut) == "corrupt"


def test_text_file_named_jpg(tmp_path):
    f = tmp_path / "page.jpg"
    f.write_text("<html><body>403 Forbidden</body></html>\n")
    assert reason(f) == "not_an_image"


def test_decompression_bomb_is_refused(tmp_path):
    """A 20000 x 20000 PNG of 49 KB (400 megapixels) is refused before it is decoded."""
    side = 20_000
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)  # filter byte + one bit per pixel
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(side, side, 1, 0, idat))
    assert bomb.stat().st_size < 100_000
    assert reason(bomb) == "too_large"


def test_max_image_pixels_is_configurable(tmp_path):
    f = save(tmp_path / "big.png", Image.fromarray(noise(200, 300)))
    assert open_image(f)[0].shape == (200, 300, 3)
    assert reason(f, max_pixels=200 * 300 - 1) == "too_large"
    assert open_image(f, max_pixels=200 * 300)[0].shape == (200, 300, 3)


def test_broken_symlink_and_link_loop(tmp_path):
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "self.png").symlink_to("self.png")
    assert reason(tmp_path / "gone.png") == "missing"
    assert reason(tmp_path / "self.png") == "unreadable"


# ----------------------------------------------------------------------------- conversions


def test_16bit_png_is_scaled_to_8bit(tmp_path):
    values = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    f = save(tmp_path / "deep.png", Image.fromarray(values))
    assert Image.open(f).mode.startswith("I")
    arr, info = open_image(f)
    expect = (values.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    assert arr.dtype == np.uint8 and arr.shape == (64, 64, 3)
    np.testing.assert_array_equal(arr[:, :, 0], expect)
    np.testing.assert_array_equal(arr[:, :, 2], expect)
    assert info.mode.startswith("I")


def test_48bit_rgb_png(tmp_path):
    px = np.zeros((8, 8, 3), ">u2")
    px[..., 0], px[..., 2] = 65535, 32768
    raw = b"".join(b"\x00" + row.tobytes() for row in px)
    f = tmp_path / "rgb48.png"
    f.write_bytes(png_bytes(8, 8, 16, 2, zlib.compress(raw)))
    arr, _ = open_image(f)
    assert tuple(arr[3, 3]) == (255, 0, 128)


def test_grayscale_gives_three_equal_channels(tmp_path):
    gray = noise()[:, :, 0]
    f = save(tmp_path / "gray.png", Image.fromarray(gray, "L"))
    arr, info = open_image(f)
    assert info.mode == "L"
    for c in range(3):
        np.testing.assert_array_equal(arr[:, :, c], gray)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    f = save(tmp_path / "print.jpg", Image.new("CMYK", (48, 48), (0, 255, 255, 0)), quality=95)
    arr, info = open_image(f)
    assert info.mode == "CMYK"
    r, g, b = arr[24, 24].astype(int)
    assert r > 240 and g < 15 and b < 15  # cyan 0, magenta+yellow full = red


def test_rgba_drops_alpha_but_keeps_pixels(tmp_path):
    rgb = noise()
    alpha = np.zeros((64, 64, 1), np.uint8)  # fully transparent: pixels must survive anyway
    f = save(tmp_path / "alpha.png", Image.fromarray(np.concatenate([rgb, alpha], 2), "RGBA"))
    arr, info = open_image(f)
    assert info.mode == "RGBA"
    np.testing.assert_array_equal(arr, rgb)


def test_palette_png_colours(tmp_path):
    img = Image.new("P", (40, 40), 0)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.paste(1, (0, 20, 40, 40))
    f = save(tmp_path / "pal.png", img, transparency=0)
    arr, info = open_image(f)
    assert info.mode == "P"
    assert tuple(arr[5, 5]) == (10, 20, 30) and tuple(arr[30, 5]) == (200, 100, 50)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = []
    for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255)):
        frame = Image.new("P", (40, 40), 0)
        frame.putpalette(list(colour) * 256)
        frames.append(frame)
    f = tmp_path / "anim.gif"
    frames[0].save(f, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(f).n_frames == 3
    arr, _ = open_image(f)
    assert tuple(arr[20, 20]) == (255, 0, 0)


def test_exif_rotated_photo_is_upright(tmp_path):
    """Orientation 6 (camera held upright): stored 60 wide x 40 high, shown 40 wide x 60 high."""
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :30] = (255, 0, 0)  # left half red, right half blue as stored
    stored[:, 30:] = (0, 0, 255)
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    f = save(tmp_path / "phone.jpg", img, exif=exif.tobytes(), quality=95)
    arr, info = open_image(f)
    assert arr.shape == (60, 40, 3) and (info.width, info.height) == (40, 60)
    assert arr[5, 20, 0] > 200 and arr[5, 20, 2] < 50  # stored left (red) is now on top
    assert arr[-5, 20, 2] > 200 and arr[-5, 20, 0] < 50


# ----------------------------------------------------------------------------- index level


def _good(root: Path, rel: str, size: int = 64) -> Path:
    return save(root / rel, Image.fromarray(noise(size, size)))


def test_image_smaller_than_one_patch(tmp_path):
    root = tmp_path / "data"
    for i in range(2):
        _good(root, f"real/r{i}.png")
        _good(root, f"fake/f{i}.png")
    _good(root, "fake/tiny.png", size=16)
    build_index(tiny_params(root), tmp_path / "m.parquet", tmp_path / "r.json")
    row = read_skipped(tmp_path / "r.json").set_index("path").loc[str(root / "fake/tiny.png")]
    assert row["status"] == "too_small" and "16x16 is smaller than one 32x32 patch" in row["error"]
    assert str(root / "fake/tiny.png") not in set(read_manifest(tmp_path / "m.parquet")["path"])


def test_symlink_loop_in_folder_tree(tmp_path):
    root = tmp_path / "data"
    _good(root, "real/a.png")
    _good(root, "fake/b.png")
    (root / "real" / "loop").symlink_to(root)  # data/real/loop -> data: a cycle
    (root / "fake" / "again").symlink_to(root / "fake")
    build_index(tiny_params(root), tmp_path / "m.parquet", tmp_path / "r.json")
    df = read_manifest(tmp_path / "m.parquet")
    assert sorted(Path(p).name for p in df["path"]) == ["a.png", "b.png"]
    assert set(df["status"]) == {"ok"}


def test_non_utf8_file_and_folder_names(tmp_path):
    root = tmp_path / "data"
    _good(root, "real/plain.png")
    gen = os.fsencode(root / "fake") + b"/gen_\xff"
    os.makedirs(gen)
    name = gen + b"/caf\xe9_\x80.png"  # Latin-1 bytes: not valid UTF-8
    Image.fromarray(noise()).save(os.fsdecode(name), "PNG")
    params = tiny_params(root)
    build_index(params, tmp_path / "m.parquet", tmp_path / "r.json")
    df = read_manifest(tmp_path / "m.parquet")
    row = df[df["label"] == 1].iloc[0]
    assert row["status"] == "ok" and file_paths(df[df["label"] == 1])[0] == name
    assert row["path"].endswith("gen_\\xff/caf\\xe9_\\x80.png") and row["source"] == "gen_\\xff"
    summary = run_extract(params, tmp_path / "m.parquet", tmp_path / "features")  # raw path
    assert summary.computed == 2


def test_same_content_under_both_labels(tmp_path):
    root = tmp_path / "data"
    a = _good(root, "real/a.png")
    _good(root, "real/b.png")
    _good(root, "fake/c.png")
    shutil.copy(a, root / "fake" / "a_copy.png")
    res = build_index(tiny_params(root), tmp_path / "m.parquet", tmp_path / "r.json")
    df = read_manifest(tmp_path / "m.parquet").set_index("path")
    assert res["label_conflicts"] == 1
    for p in (a, root / "fake" / "a_copy.png"):
        assert df.loc[str(p), "status"] == "label_conflict"
    assert (df["status"] == "ok").sum() == 2


PROJECT = Path(__file__).resolve().parents[1]


def _drop_read_override() -> None:
    """In the child: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so
    that after exec even root is bound by permission bits (a real permission denial)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _nsnet(args: list[str], cwd: Path, drop_caps: bool) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, without the capabilities that bypass permissions."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "nsnet.stages.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=_drop_read_override if drop_caps else None)


def test_unreadable_permissions(tmp_path):
    """chmod 000 files and folders are recorded in the report, not dropped.

    As root, permission bits do not stop reads, so the index then runs in a subprocess whose
    capabilities to bypass them were dropped; only if that is impossible is the test skipped.
    """
    root = tmp_path / "data"
    for i in range(2):
        _good(root, f"real/r{i}.png")
        _good(root, f"fake/f{i}.png")
    locked = _good(root, "fake/locked.png")
    hidden = _good(root, "real/private/inside.png").parent
    locked.chmod(0)
    hidden.chmod(0)
    try:
        write_params(tmp_path / "params.yaml", tiny_raw(root))
        drop = os.access(locked, os.R_OK)  # root: permission bits are not enforced for us
        proc = _nsnet(["index"], tmp_path, drop)
        if drop and "PR_CAPBSET_DROP" in proc.stderr:
            pytest.skip("running as root and capabilities cannot be dropped here, so chmod 000 "
                        "files stay readable")
        assert proc.returncode == 0, proc.stderr
        df = read_manifest(tmp_path / "cache" / "manifest.parquet")
        skipped = read_skipped(tmp_path / "cache" / "index_report.json").set_index("path")
        assert skipped.loc[str(locked), "status"] == "unreadable"
        assert "permission denied" in skipped.loc[str(locked), "error"].lower()
        assert (df["status"] == "ok").sum() == 4 == len(df)
        assert "unreadable: 1 file(s)" in proc.stderr and "locked.png" in proc.stderr
        assert "unlisted_folder" in proc.stderr and "private" in proc.stderr
        strict = _nsnet(["index", "--strict"], tmp_path, drop)
        assert strict.returncode == 1, strict.stderr
        assert "1 file(s) would be skipped and 1 folder(s) could not be listed" in strict.stderr
    finally:
        locked.chmod(0o644)
        hidden.chmod(0o755)


# ----------------------------------------------------------------------------- whole stage


def _bad_folder(root: Path) -> dict[str, str]:
    """Good images plus one of every unreadable kind; returns file name -> expected status."""
    for i in range(3):
        _good(root, f"real/r{i}.png")
        _good(root, f"fake/gen/f{i}.png")
    save(root / "real/gray.png", Image.fromarray(noise()[:, :, 0], "L"))
    save(root / "fake/gen/cmyk.jpg", Image.new("CMYK", (64, 64), (0, 255, 255, 0)))
    (root / "real/empty.jpg").write_bytes(b"")
    (root / "real/page.jpg").write_text("not an image")
    data = io.BytesIO()
    Image.fromarray(noise(128, 128)).save(data, "JPEG")
    (root / "fake/gen/cut.jpg").write_bytes(data.getvalue()[:700])
    _good(root, "fake/gen/tiny.png", size=8)
    return {"empty.jpg": "empty_file", "page.jpg": "not_an_image", "cut.jpg": "corrupt",
            "tiny.png": "too_small", "gray.png": "ok", "cmyk.jpg": "ok", "r0.png": "ok"}


def test_index_cli_records_reasons_prints_summary_and_extract_skips(tmp_path, monkeypatch):
    root = tmp_path / "data"
    expected = _bad_folder(root)
    write_params(tmp_path / "params.yaml", tiny_raw(root))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["index"])
    assert result.exit_code == 0, result.output
    df = read_manifest("cache/manifest.parquet")
    skipped = read_skipped("cache/index_report.json")  # the unusable files: there only
    assert set(df["status"]) == {"ok"}
    status = {Path(p).name: s for p, s in zip([*df["path"], *skipped["path"]],
                                               [*df["status"], *skipped["status"]], strict=True)}
    for name, want in expected.items():
        assert status[name] == want, name
    assert skipped["error"].str.len().gt(0).all()
    for want in ("empty_file: 1 file(s)", "not_an_image: 1 file(s)", "corrupt: 1 file(s)",
                 "too_small: 1 file(s)", "page.jpg", "cut.jpg"):
        assert want in result.output
    out = CliRunner().invoke(main, ["extract"])
    assert out.exit_code == 0, out.output
    ok_ids = df.loc[df["status"] == "ok", "id"].tolist()
    sel = part_of(Path("cache/features"), load_params("params.yaml"), "selection")
    assert sorted(decode_ids(sel.index().keys)) == sorted(ok_ids) and len(ok_ids) == 8


def test_strict_makes_any_skip_an_error(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _bad_folder(root)
    write_params(tmp_path / "params.yaml", tiny_raw(root))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["index", "--strict"])
    assert result.exit_code == 1
    assert "--strict: 4 file(s) would be skipped" in result.output
    assert not Path("cache/manifest.parquet").exists()
    ok = CliRunner().invoke(main, ["index", "--set", "data.strict=true", "--no-strict"])
    assert ok.exit_code == 0, ok.output
