"""The Python API: ``nsnet.Detector`` scores paths, bytes, PIL images and arrays exactly as
``nsnet predict`` scores the files, and explains one image as ``nsnet explain`` does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsnet.data.manifest import read_manifest
from nsnet.heads.train_stage import run_train
from nsnet.inference.explain import explain_image
from nsnet.inference.predict import RESULT_COLUMNS, load_chain, predict_paths


def train_bundle(built_cache, out: Path) -> Path:
    """A head trained long enough that its probabilities spread out (as in test_predict)."""
    params = dataclasses.replace(built_cache.params, train=dataclasses.replace(
        built_cache.params.train, epochs=15, lr=3e-3, device="cpu"))
    run_train(params, built_cache.manifest, built_cache.features, out, out.parent / "log.csv")
    return out


@pytest.fixture(scope="module")
def bundle(built_cache, tmp_path_factory) -> Path:
    return train_bundle(built_cache, tmp_path_factory.mktemp("detector") / "model")


@pytest.fixture(scope="module")
def detector(bundle):
    from nsnet import Detector

    return Detector.load(bundle, device="cpu")


@pytest.fixture(scope="module")
def paths(built_cache) -> list[str]:
    return read_manifest(built_cache.manifest, only_ok=True)["path"].tolist()[::9][:5]


def test_paths_and_bytes_score_exactly_as_predict(detector, bundle, paths):
    expected = predict_paths(load_chain(bundle, device="cpu"), paths, batch_size=16)
    by_path = detector.predict(paths)
    by_bytes = detector.predict([Path(p).read_bytes() for p in paths], names=paths)
    for df in (by_path, by_bytes):
        assert list(df.columns) == RESULT_COLUMNS
        assert df["path"].tolist() == paths and df["id"].tolist() == expected["id"].tolist()
        np.testing.assert_allclose(df["prob"].to_numpy(), expected["prob"].to_numpy(), atol=1e-5)
        assert df["label"].tolist() == expected["label"].tolist()
        assert df["caption"].tolist() == expected["caption"].tolist()
    assert np.ptp(expected["prob"].to_numpy()) > 1e-4
    shares = expected["semantic_share"].to_numpy()
    assert ((shares > 0) & (shares < 1)).all()  # the advanced head removes part of x


def test_pil_images_and_arrays_score_alike_and_single_items_work(detector, paths):
    pil = Image.open(paths[0])
    arr = np.asarray(pil.convert("RGB"))
    df = detector.predict([pil, arr, arr[:, :, 0], np.dstack([arr, np.full(arr.shape[:2], 9,
                                                                           np.uint8)])])
    assert (df["status"] == "ok").all()
    assert df["id"].iloc[0] == df["id"].iloc[1] == df["id"].iloc[3]  # same pixels, same id
    assert df["prob"].iloc[0] == pytest.approx(df["prob"].iloc[1], abs=1e-6)
    assert df["prob"].iloc[3] == pytest.approx(df["prob"].iloc[1], abs=1e-6)  # alpha dropped
    single = detector.predict(arr)
    assert len(single) == 1 and single["prob"].iloc[0] == pytest.approx(df["prob"].iloc[1],
                                                                          abs=1e-6)
    assert detector.predict(paths[0])["path"].tolist() == [paths[0]]


def test_bad_items_get_a_status_not_an_exception(detector, tmp_path):
    df = detector.predict([np.zeros((64, 64, 3), np.float32), np.zeros((4, 64, 64, 3), np.uint8),
                           np.zeros((8, 8, 3), np.uint8), b"not an image", b"", 42,
                           tmp_path / "missing.png"])
    assert df["status"].tolist() == ["not_an_image", "not_an_image", "too_small",
                                     "not_an_image", "empty_file", "not_an_image", "missing"]
    assert df["prob"].isna().all() and (df["error"] != "").all()
    small = type(detector)(detector.chain, max_pixels=1000)
    assert small.predict(np.zeros((64, 64, 3), np.uint8))["status"].iloc[0] == "too_large"
    with pytest.raises(ValueError, match="2 names for 1 items"):
        detector.predict([b"x"], names=["a", "b"])


def test_explain_equals_nsnet_explain_and_rejects_bad_input(detector, paths):
    from nsnet.data.images import ImageError

    ex = detector.explain(paths[1])
    ref = explain_image(detector.chain, paths[1])
    assert ex.id == ref.id and ex.caption == ref.caption and ex.label == ref.label
    assert ex.prob == pytest.approx(ref.prob, abs=1e-6)
    np.testing.assert_allclose([p.contribution for p in ex.patches],
                               [p.contribution for p in ref.patches], atol=1e-6)
    from_array = detector.explain(np.asarray(Image.open(paths[1]).convert("RGB")))
    assert len(from_array.patches) == detector.chain.spec.count
    with pytest.raises(ImageError, match="not_an_image"):
        detector.explain(b"nope")


def test_detector_is_public_and_documented(bundle):
    import nsnet

    assert "Detector" in nsnet.__all__
    from nsnet import Detector

    assert "Example" in Detector.__doc__ and "Example" in Detector.load.__doc__
    assert Detector.load(bundle, device="cpu").describe()["head"] == "advanced"
