"""The whole chain on the session cache: features align with the manifest, heads train."""

import h5py

from pipeline.data.manifest import read_manifest
from pipeline.evaluation.evaluate_stage import run_evaluate
from pipeline.heads.train_stage import run_train


def test_stages_produce_aligned_outputs(built_cache, tmp_path):
    ids = read_manifest(built_cache.manifest, only_ok=True)["id"].tolist()
    with h5py.File(built_cache.selections) as f:
        assert f["cells"].shape == (len(ids), 49, 2)
        assert [x.decode() for x in f["ids"][:]] == ids
    with h5py.File(built_cache.embeddings) as f:
        assert f["image"].shape == (len(ids), 128)
        assert f["image"].dtype == "float16"
    model_dir = tmp_path / "model"
    run_train(built_cache.params, built_cache.manifest, built_cache.embeddings, model_dir,
              tmp_path / "log.csv")
    out = run_evaluate(built_cache.params, built_cache.manifest, built_cache.embeddings,
                       model_dir, tmp_path / "metrics.json", tmp_path / "plots")
    assert set(out["test"]["per_source"]) <= {"tconv", "nn_conv", "bilinear"}
    assert out["test"]["per_source"]
    assert (tmp_path / "plots" / "roc.csv").exists()
