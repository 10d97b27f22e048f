"""Feature recipes of the baseline detectors, checked against independent computations.

The pixels are checked against torchvision/PIL transforms written as the official code writes
them (UniversalFakeDetect ``validate.py`` / ``data/datasets.py``, RINE ``src/utils.py``,
Cozzolino et al. ``main.py``); the tensors against the hidden states open_clip returns
(``forward_intermediates``) and the official way of dropping the projection.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.ndimage import gaussian_filter

from nsnet.backbones import recipes as R
from nsnet.backbones.clip import ClipBackbone, load_clip

PROJECT = Path(__file__).resolve().parents[1]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # validate.py MEAN["clip"], STD["clip"]
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient plus noise, so crops, blur and JPEG all change it visibly."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                     (xx + yy) * 255 // max(h + w - 2, 1)], axis=-1)
    return np.clip(base + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny() -> ClipBackbone:
    return load_clip("tiny", "", "cpu")


# ------------------------------------------------------------------------------------ pixels
@pytest.mark.parametrize("h, w", [(300, 260), (224, 224), (225, 227), (100, 300), (223, 500),
                                  (256, 256), (50, 60)])
def test_center_crop_is_torchvisions_center_crop(h, w):
    rgb = _image(h, w)
    expected = np.asarray(T.CenterCrop(224)(Image.fromarray(rgb)))
    np.testing.assert_array_equal(R.center_crop(rgb), expected)


@pytest.mark.parametrize("h, w", [(300, 260), (256, 256), (180, 400), (1000, 333)])
def test_resize_shorter_is_torchvisions_resize(h, w):
    rgb = _image(h, w, seed=1)
    for mode, interp in (("bilinear", T.InterpolationMode.BILINEAR),
                         ("bicubic", T.InterpolationMode.BICUBIC)):
        expected = np.asarray(TF.resize(Image.fromarray(rgb), 256, interpolation=interp))
        np.testing.assert_array_equal(R.resize_shorter(rgb, 256, mode), expected)


def _univfd_test_tensor(rgb: np.ndarray) -> torch.Tensor:
    """validate.py RealFakeDataset.transform: CenterCrop(224), ToTensor, Normalize(clip)."""
    tf = T.Compose([T.CenterCrop(224), T.ToTensor(), T.Normalize(mean=CLIP_MEAN, std=CLIP_STD)])
    return tf(Image.fromarray(rgb).convert("RGB"))[None]


@pytest.mark.parametrize("h, w", [(300, 260), (120, 400)])
def test_view_0_is_univfds_test_transform(tiny, h, w):
    rgb = _image(h, w, seed=2)
    views = R.crop_set(rgb, "ab12", 4)
    assert views.shape == (4, 224, 224, 3) and views.dtype == np.uint8
    np.testing.assert_array_equal(views[0], np.asarray(T.CenterCrop(224)(Image.fromarray(rgb))))
    with torch.inference_mode():
        expected = tiny.model.encode_image(_univfd_test_tensor(rgb)).float()
    torch.testing.assert_close(R.clip_crop_embeddings(tiny, views[:1]), expected,
                               rtol=1e-5, atol=1e-5)


def _official_view(rgb: np.ndarray, spec: R.Augment, d: R.AugmentDraw) -> np.ndarray:
    """The training transform written as data/datasets.py / src/utils.py write it, on PIL."""
    img = Image.fromarray(rgb)
    if spec.resize_short:  # custom_resize: TF.resize(img, loadSize, interpolation=bilinear)
        img = TF.resize(img, spec.resize_short, interpolation=T.InterpolationMode.BILINEAR)
    arr = np.array(img)
    if d.blur_sigma is not None:  # gaussian_blur: in place per channel
        gaussian_filter(arr[:, :, 0], output=arr[:, :, 0], sigma=d.blur_sigma)
        gaussian_filter(arr[:, :, 1], output=arr[:, :, 1], sigma=d.blur_sigma)
        gaussian_filter(arr[:, :, 2], output=arr[:, :, 2], sigma=d.blur_sigma)
    if d.jpeg is not None:  # pil_jpg
        out = io.BytesIO()
        Image.fromarray(arr).save(out, format="jpeg", quality=d.jpeg[1])
        arr = np.array(Image.open(out))
    img = TF.crop(Image.fromarray(arr), d.top, d.left, 224, 224)  # RandomCrop's crop
    if d.flip:
        img = TF.hflip(img)
    return np.asarray(img)


@pytest.mark.parametrize("spec", [R.UNIVFD_TRAIN, R.RINE_TRAIN], ids=lambda s: s.name)
def test_training_views_follow_the_official_transform(spec):
    rgb = _image(280, 310, seed=3)
    views = R.crop_set(rgb, "c0ffee", 9, spec)
    draws = R.augment_draws(rgb, "c0ffee", 9, spec)
    assert len(draws) == 8
    assert {d.blur_sigma is None for d in draws} == {True, False}  # both branches exercised
    assert {d.jpeg is None for d in draws} == {True, False}
    for k, d in enumerate(draws, start=1):
        np.testing.assert_array_equal(views[k], _official_view(rgb, spec, d))
    # fixed functions of the image id: same id, same views; another id, other views
    np.testing.assert_array_equal(views, R.crop_set(rgb, "c0ffee", 9, spec))
    other = R.crop_set(rgb, "beef", 9, spec)
    assert not np.array_equal(views[1:], other[1:])
    np.testing.assert_array_equal(views[0], other[0])


def test_draws_have_the_papers_probabilities_and_ranges():
    def draws(spec: R.Augment) -> list[R.AugmentDraw]:
        return [R.draw_augment(spec, 256, 300, R.augment_seed(f"{i:x}", spec.name, 1))
                for i in range(2000)]

    u, r = draws(R.UNIVFD_TRAIN), draws(R.RINE_TRAIN)
    for ds in (u, r):
        blur = [d.blur_sigma for d in ds if d.blur_sigma is not None]
        assert abs(len(blur) / len(ds) - 0.5) < 0.05 and 0 <= min(blur) and max(blur) <= 3.0
        assert abs(np.mean(blur) - 1.5) < 0.15
        assert abs(sum(d.jpeg is not None for d in ds) / len(ds) - 0.5) < 0.05
        assert abs(sum(d.flip for d in ds) / len(ds) - 0.5) < 0.05
        assert {d.jpeg[0] for d in ds if d.jpeg} == {"cv2", "pil"}
        assert all(0 <= d.top <= 32 and 0 <= d.left <= 76 for d in ds)
        assert {d.top for d in ds} == set(range(33))
    assert {d.jpeg[1] for d in u if d.jpeg} == set(range(30, 101))  # options: jpg_qual 30,100
    assert {d.jpeg[1] for d in r if d.jpeg} == {30, 100}  # sample_discrete([30, 100])


def test_small_images_are_padded_and_the_crop_count_validated():
    rgb = _image(100, 150, seed=4)
    views = R.crop_set(rgb, "01", 3, R.RINE_TRAIN)  # RINE does not resize: padded to 224
    assert views.shape == (3, 224, 224, 3)
    with pytest.raises(ValueError, match="count must be >= 1"):
        R.crop_set(rgb, "01", 0)
    with pytest.raises(ValueError, match="uint8 RGB"):
        R.crop_set(rgb.astype(np.float32), "01", 1)


def test_cozzolino_pixels_are_resize_224_bicubic_then_center_crop():
    rgb = _image(300, 410, seed=5)
    tf = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
                    T.CenterCrop((224, 224))])  # main.py, patch_size 'Clip224'
    np.testing.assert_array_equal(R.cozzolino_pixels(rgb), np.asarray(tf(Image.fromarray(rgb))))


# ------------------------------------------------------------------------------ image tower
def _rine_reference(model: torch.nn.Module, x: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """ln_2(x + attn(ln_1(x)))[:, 0] for each block, from the block inputs open_clip returns.

    ``forward_intermediates`` gives every block's output; block i's input is block i-1's (the
    embedded tokens for block 0). The mid-block residual is rebuilt from the block's attention,
    checked by rebuilding the block output from it, then its ln_2 class token is taken.
    """
    visual = model.visual
    blocks = visual.transformer.resblocks
    with torch.inference_mode():
        inter = visual.forward_intermediates(x, output_fmt="NLC", output_extra_tokens=True)
        outs = [torch.cat([c, t], dim=1) for c, t in
                zip(inter["image_intermediates_prefix"], inter["image_intermediates"],
                    strict=True)]
        inputs = [visual._embeds(x), *outs[:-1]]
        found = []
        for i, blk in enumerate(blocks):
            mid = inputs[i] + blk.ls_1(blk.attention(blk.ln_1(inputs[i])))
            rebuilt = mid + blk.ls_2(blk.mlp(blk.ln_2(mid)))
            torch.testing.assert_close(rebuilt, outs[i], rtol=1e-4, atol=1e-4)
            found.append(blk.ln_2(mid)[:, 0])
    return torch.stack([found[i] for i in layers], dim=1).float()


def _pixels(n: int, seed: int = 6) -> np.ndarray:
    return np.stack([R.center_crop(_image(240, 260, seed + i)) for i in range(n)])


def test_clip_layers_are_rines_ln2_class_tokens(tiny):
    pixels = _pixels(3)
    x = R._normalised(tiny, pixels)
    emb, layers = R.image_tower(tiny, pixels)
    assert layers.shape == (3, 2, 128) and R.all_layers(tiny) == (0, 1)
    torch.testing.assert_close(layers, _rine_reference(tiny.model, x, [0, 1]),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(R.clip_layers(tiny, pixels, [1]), layers[:, 1:])
    # the same pass gives the embedding UniversalFakeDetect reads, as the store embeds today
    torch.testing.assert_close(emb, tiny.encode_images(pixels), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(emb, R.clip_crop_embeddings(tiny, pixels))
    assert not tiny.model.visual.transformer.resblocks[0].ln_2._forward_hooks  # hooks removed


def test_clip_layers_checks_its_arguments(tiny):
    pixels = _pixels(1)
    for bad in ([], [2], [1, 0], [0, 0], [-1]):
        with pytest.raises(ValueError, match="increasing block indices"):
            R.clip_layers(tiny, pixels, bad)
    with pytest.raises(ValueError, match="crop them first"):
        R.clip_layers(tiny, _image(100, 100)[None], None)


def test_cozzolino_feature_is_the_unit_pre_projection_class_token(tiny):
    pixels = np.stack([R.cozzolino_pixels(_image(300, 200, s)) for s in (7, 8)])
    got = R.cozzolino_features(tiny, pixels)
    official = copy.deepcopy(tiny.model)  # openclipnet.py: next_to_last -> visual.proj = None
    official.visual.proj = None
    with torch.inference_mode():
        expected = official.encode_image(R._normalised(tiny, pixels), normalize=True).float()
    assert got.shape == (2, 128)  # the tiny tower's width (1024 for ViT-L/14)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2))


def test_cozzolino_tag_is_the_official_checkpoint():
    cfg = open_clip.get_pretrained_cfg(R.COZZOLINO_ARCH, R.COZZOLINO_PRETRAINED)
    # networks/openclipnet.py 'clipL14commonpool': laion/CLIP-ViT-L-14-CommonPool.XL-s13B-b90K
    assert cfg["hf_hub"].rstrip("/") == "laion/CLIP-ViT-L-14-CommonPool.XL-s13B-b90K"
    assert tuple(cfg["mean"]) == CLIP_MEAN and tuple(cfg["std"]) == CLIP_STD  # norm_type clip


@pytest.mark.slow
def test_missing_cozzolino_weights_say_how_to_get_them(tmp_path):
    code = ("from nsnet.backbones.recipes import load_cozzolino\n"
            "from nsnet.backbones.availability import ModelUnavailable\n"
            "try:\n    load_cozzolino('cpu')\nexcept ModelUnavailable as e:\n    print(e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path),
           "PYTHONPATH": str(PROJECT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert "commonpool_xl_s13b_b90k" in proc.stdout and "Hugging Face cache" in proc.stdout, \
        proc.stdout + proc.stderr


@pytest.mark.slow
def test_clip_layers_on_a_real_shaped_vit_l_14():
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-L-14", pretrained=None).eval()
    clip = ClipBackbone(model, None, CLIP_MEAN, CLIP_STD, 224, 768, torch.device("cpu"))
    pixels = _pixels(1)
    emb, layers = R.image_tower(clip, pixels, [0, 11, 23])
    assert R.all_layers(clip) == tuple(range(24))
    assert emb.shape == (1, 768) and layers.shape == (1, 3, 1024)
    assert layers.to(torch.float16).numel() * 2 * 24 // 3 == 49_152  # bytes/image, 24 blocks
    torch.testing.assert_close(layers, _rine_reference(model, R._normalised(clip, pixels),
                                                       [0, 11, 23]), rtol=1e-4, atol=1e-4)
