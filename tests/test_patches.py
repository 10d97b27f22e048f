"""Spectral-entropy patch selection against an independent numpy reference, and its cache."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from nsnet.data.images import open_image
from nsnet.data.manifest import read_manifest
from nsnet.extraction.patch_selection import (
    PatchSpec,
    choose,
    patch_entropies,
    patch_entropies_reference,
    select_batch,
    select_patches,
    to_gray,
)
from tests.conftest import part_of, read_part

SPECS = [PatchSpec(), PatchSpec(size=16, n_low=4, n_high=5)]


def ref_entropies(rgb: np.ndarray, size: int) -> np.ndarray:
    """Shannon entropy (bits) of each patch's normalised FFT power spectrum, plain numpy."""
    gray = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    gh, gw = gray.shape[0] // size, gray.shape[1] // size
    out = np.empty((gh, gw))
    for r in range(gh):
        for c in range(gw):
            patch = gray[r * size:(r + 1) * size, c * size:(c + 1) * size]
            power = np.abs(np.fft.fft2(patch)) ** 2
            p = power / power.sum()
            p = p[p > 0]
            out[r, c] = -(p * np.log2(p)).sum()
    return out


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Noise with a smooth region, so entropies spread out (low and high are both present)."""
    img = rng.integers(1, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = ((np.sin(yy / 9.0) + np.cos(xx / 13.0)) * 60 + 128).astype(np.uint8)
    img[: h // 2, : w // 2] = smooth[: h // 2, : w // 2, None]
    return img


def tile(composite: np.ndarray, k: int, spec: PatchSpec) -> np.ndarray:
    r, c = divmod(k, spec.grid)
    s = spec.size
    return composite[r * s:(r + 1) * s, c * s:(c + 1) * s]


@pytest.mark.parametrize("shape", [(256, 256), (300, 261), (97, 450)])
def test_entropy_matches_numpy_reference(shape):
    rng = np.random.default_rng(sum(shape))
    rgb = random_image(rng, *shape)
    for size in (32, 16):
        got = patch_entropies(to_gray(torch.from_numpy(rgb)), size).numpy()
        want = ref_entropies(rgb, size)
        assert got.shape == want.shape == (shape[0] // size, shape[1] // size)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_entropy_of_constant_and_single_frequency_patches():
    flat = np.full((32, 32, 3), 77, np.uint8)  # all power at DC: entropy 0
    assert patch_entropies(to_gray(torch.from_numpy(flat)), 32).item() == pytest.approx(0.0)
    wave = np.zeros((32, 32, 3), np.uint8)
    wave[:, ::2] = 200  # DC and the Nyquist column carry equal power: exactly 1 bit
    h_wave = patch_entropies(to_gray(torch.from_numpy(wave)), 32).item()
    assert h_wave == pytest.approx(1.0, abs=1e-5)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    h = patch_entropies(to_gray(torch.from_numpy(noise)), 32).item()
    assert h_wave < h <= np.log2(32 * 32)  # noise spreads power over many bins


@pytest.mark.parametrize("spec", SPECS, ids=["default", "small"])
@pytest.mark.parametrize("shape", [(320, 288), (256, 383)])
def test_selected_set_is_exactly_lowest_and_highest(spec, shape):
    rng = np.random.default_rng(shape[1])
    rgb = random_image(rng, *shape)
    ref = ref_entropies(rgb, spec.size)
    sel = select_patches(rgb, "0123456789abcdef0123456789abcdef", spec)
    order = np.argsort(ref.reshape(-1), kind="stable")
    gw = ref.shape[1]
    want = {divmod(int(i), gw) for i in np.concatenate([order[:spec.n_low],
                                                        order[-spec.n_high:]])}
    cells = [tuple(int(v) for v in rc) for rc in sel.cells]
    assert len(cells) == spec.count and len(set(cells)) == spec.count  # no repeats
    assert set(cells) == want
    np.testing.assert_allclose(sel.entropy, [ref[r, c] for r, c in cells], rtol=1e-5, atol=1e-5)
    low = sorted(ref.reshape(-1))[: spec.n_low]
    assert sorted(sel.entropy)[: spec.n_low] == pytest.approx(low, abs=1e-4)


@pytest.mark.parametrize("spec", SPECS, ids=["default", "small"])
def test_composite_tiles_are_the_source_pixels(spec):
    rgb = random_image(np.random.default_rng(5), 333, 270)
    sel = select_patches(rgb, "feedface" * 4, spec)
    assert sel.composite.shape == (spec.side, spec.side, 3)
    assert sel.composite.dtype == np.uint8
    s = spec.size
    for k, (r, c) in enumerate(sel.cells):
        np.testing.assert_array_equal(tile(sel.composite, k, spec),
                                      rgb[r * s:(r + 1) * s, c * s:(c + 1) * s])


def test_order_deterministic_per_id_and_different_between_ids():
    rgb = random_image(np.random.default_rng(7), 256, 256)
    spec = PatchSpec()
    a1 = select_patches(rgb, "aa" * 16, spec)
    a2 = select_patches(rgb.copy(), "aa" * 16, spec)
    b = select_patches(rgb, "b1" * 16, spec)
    np.testing.assert_array_equal(a1.cells, a2.cells)
    np.testing.assert_array_equal(a1.composite, a2.composite)
    assert {tuple(x) for x in a1.cells} == {tuple(x) for x in b.cells}  # same patches...
    assert not np.array_equal(a1.cells, b.cells)  # ...in another order
    # The order is not simply entropy order either (the reference shuffles patches).
    assert not np.all(np.diff(a1.entropy) >= 0)


@pytest.mark.parametrize("shape", [(100, 130), (32, 32), (64, 200)])
def test_small_image_repeats_its_own_patches(shape):
    rgb = random_image(np.random.default_rng(3), *shape)
    spec = PatchSpec()
    sel = select_patches(rgb, "cafe" * 8, spec)
    gh, gw = shape[0] // 32, shape[1] // 32
    assert gh * gw < spec.count
    assert sel.composite.shape == (224, 224, 3)
    counts = Counter(tuple(int(v) for v in rc) for rc in sel.cells)
    assert set(counts) == {(r, c) for r in range(gh) for c in range(gw)}  # every patch used
    assert max(counts.values()) - min(counts.values()) <= 1  # evenly repeated
    for k, (r, c) in enumerate(sel.cells):
        t = tile(sel.composite, k, spec)
        assert t.any(), "black tile"
        np.testing.assert_array_equal(t, rgb[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32])


def test_image_smaller_than_a_patch_is_refused():
    with pytest.raises(ValueError, match="smaller than one patch"):
        select_patches(np.ones((20, 64, 3), np.uint8), "ab" * 16, PatchSpec())


@pytest.mark.parametrize("spec", SPECS, ids=["default", "small"])
def test_batched_selection_equals_single(spec):
    rng = np.random.default_rng(11)
    shapes = [(256, 256), (300, 200), (256, 256), (96, 96), (300, 200), (256, 256)]
    images = [random_image(rng, *s) for s in shapes]
    ids = [f"{i:02x}" * 16 for i in range(len(images))]
    batch = select_batch(images, ids, spec)
    for img, image_id, got in zip(images, ids, batch, strict=True):
        want = select_patches(img, image_id, spec)
        np.testing.assert_array_equal(got.cells, want.cells)
        np.testing.assert_array_equal(got.composite, want.composite)
        np.testing.assert_allclose(got.entropy, want.entropy, rtol=1e-6)


@pytest.mark.parametrize("size", [32, 16, 15])
def test_fast_entropies_choose_the_same_cells_as_the_reference_fft(size):
    """The real-FFT form (Hermitian weights, luma as one matmul) against the complex float64
    form it replaced: same cells chosen, entropies within float tolerance."""
    rng = np.random.default_rng(size)
    spec = PatchSpec(size=size, n_low=4, n_high=5) if size != 32 else PatchSpec()
    for shape in [(512, 512), (384, 517), (200, 333), (96, 96)]:
        rgb = random_image(rng, *shape)
        gray = to_gray(torch.from_numpy(rgb))
        fast, ref = patch_entropies(gray, size), patch_entropies_reference(gray, size)
        np.testing.assert_allclose(fast.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
        image_id = f"{shape[0]:04x}" * 8
        np.testing.assert_array_equal(choose(fast, spec, image_id)[0],
                                      choose(ref, spec, image_id)[0])


def test_cached_selections_point_at_the_source_pixels(built_cache, tmp_path):
    """The store's selection part holds cells, not pixels: at each row's cells the entropies
    are the numpy reference's, they are the lowest/highest ones, and the composite rebuilt
    from the image (kept with patches.keep_composites) is those pixels."""
    from nsnet.extraction.extract_stage import run_extract

    rows = read_manifest(built_cache.manifest, only_ok=True)
    spec = PatchSpec.of(built_cache.params.patches)
    ids = rows["id"].tolist()
    sel = part_of(built_cache.features, built_cache.params, "selection")
    got = sel.gather(ids, ["cells", "entropy"])
    cells, ents = got["cells"], got["entropy"]
    assert set(sel.shapes()) == {"cells", "entropy"}  # no pixels in the cache
    prov = sel.info()
    assert cells.shape == (len(ids), spec.count, 2) and ents.shape == (len(ids), spec.count)
    assert prov["provenance"]["stage"] == "extract" and prov["part"] == "selection"
    keep = built_cache.copy_to(tmp_path / "keep")
    params = built_cache.params
    params.patches.keep_composites = True
    try:
        summary = run_extract(params, keep.manifest, keep.features)
        assert summary.missing == {"composite": len(ids)}  # nothing else recomputed
        comps = read_part(keep.features, params, "composite", ids)["composite"]
    finally:
        params.patches.keep_composites = False
    for i in range(0, len(ids), max(1, len(ids) // 8)):  # a spread of rows
        rgb, _ = open_image(rows["path"][i])
        ref = ref_entropies(rgb, spec.size)
        np.testing.assert_allclose(ents[i], ref[cells[i, :, 0], cells[i, :, 1]],
                                   rtol=1e-5, atol=1e-5)
        order = np.sort(ref.reshape(-1))
        chosen = np.sort(ref[cells[i, :, 0], cells[i, :, 1]])
        if order.size >= spec.count:
            want = np.concatenate([order[:spec.n_low], order[order.size - spec.n_high:]])
            np.testing.assert_allclose(chosen, want, rtol=1e-5, atol=1e-5)
        for k, (r, c) in enumerate(cells[i]):
            y, x = r * spec.size, c * spec.size
            np.testing.assert_array_equal(tile(comps[i], k, spec),
                                          rgb[y:y + spec.size, x:x + spec.size])
