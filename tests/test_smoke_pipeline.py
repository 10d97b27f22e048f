"""The whole chain on the session cache: features align with the manifest, heads train."""

from nsnet.data.manifest import read_manifest
from nsnet.evaluation.evaluate_stage import run_evaluate
from nsnet.heads.train_stage import run_train
from tests.conftest import part_of, read_part


def test_stages_produce_aligned_outputs(built_cache, tmp_path):
    ids = read_manifest(built_cache.manifest, only_ok=True)["id"].tolist()
    p = built_cache.params
    sel = read_part(built_cache.features, p, "selection", ids)
    assert sel["cells"].shape == (len(ids), 49, 2)
    image = read_part(built_cache.features, p, "image:0", ids)["emb"]
    assert image.shape == (len(ids), 128) and image.dtype == "float16"
    for kind in ("selection", "caption", "image:0", "text"):  # exactly the manifest's images
        assert len(part_of(built_cache.features, p, kind).index()) == len(ids), kind
    model_dir = tmp_path / "model"
    run_train(built_cache.params, built_cache.manifest, built_cache.features, model_dir,
              tmp_path / "log.csv")
    out = run_evaluate(built_cache.params, built_cache.manifest, built_cache.features,
                       model_dir, tmp_path / "metrics.json", tmp_path / "plots")
    assert set(out["test"]["per_source"]) <= {"tconv", "nn_conv", "bilinear"}
    assert out["test"]["per_source"]
    assert (tmp_path / "plots" / "roc.csv").exists()
