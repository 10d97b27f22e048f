"""The fit loop over cached features: determinism, best-epoch choice, divergence, memory-map."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

import nsnet.extraction.cached_features as features
from nsnet.config import TrainParams
from nsnet.evaluation.compare_stage import format_comparison, run_compare
from nsnet.extraction.cached_features import FeatureSet, MappedRows, load_features, select
from nsnet.heads.train_stage import run_train
from nsnet.heads.training_loop import TrainingDiverged, fit, head_loss, predict_proba
from nsnet.metrics import binary_metrics

TP = TrainParams(epochs=4, batch_size=32, hidden_dim=32, proj_dim=16, nsnet_k=4, device="cpu")


def synthetic(n: int, d: int = 24, seed: int = 0, split: str = "train") -> FeatureSet:
    """Image features = caption semantics + a weak fake-only artifact direction + noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    text = rng.normal(size=(n, 3)) @ rng.normal(size=(3, d)) + 0.1 * rng.normal(size=(n, d))
    image = text + 0.8 * y[:, None] * np.eye(d)[0] + 0.5 * rng.normal(size=(n, d))
    frame = pd.DataFrame({"id": [f"{split}{i}" for i in range(n)], "label": y,
                          "source": np.where(y == 1, "gen", "real"), "split": split,
                          "path": ""})
    return FeatureSet(frame, torch.from_numpy(image).float(), torch.from_numpy(text).float(), {})


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["composite_probe", "nsnet", "advanced"])
def test_fit_is_deterministic_for_a_seed(kind):
    train, val = synthetic(96), synthetic(40, seed=1, split="val")
    tp = dataclasses.replace(TP, epochs=2)
    a = _weights(fit(kind, train, val, tp).model)
    torch.manual_seed(12345)  # the global RNG state must not matter
    b = _weights(fit(kind, train, val, tp).model)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = _weights(fit(kind, train, val, dataclasses.replace(tp, seed=1)).model)
    assert any(not torch.equal(a[k], c[k]) for k in a if k != "basis")


def test_best_epoch_is_the_one_with_the_best_validation_ap():
    train, val = synthetic(128, seed=2), synthetic(60, seed=3, split="val")
    history: list[dict] = []
    seen: list[dict] = []
    tp = dataclasses.replace(TP, epochs=8, lr=5e-3)
    res = fit("advanced", train, val, tp, log=history, on_epoch=seen.append)
    assert [r["epoch"] for r in history] == list(range(1, 9)) and seen == history
    aps = [r["val_ap"] for r in history]
    assert len(set(aps)) > 1  # the choice is not trivial
    top = max(aps)
    tied = [r for r in history if r["val_ap"] == top]
    assert res.best_epoch == max(tied, key=lambda r: r["val_acc"])["epoch"]
    assert res.best_val_ap == top
    # the returned model is that epoch's checkpoint, not the last one
    prob = predict_proba(res.model, val.image, val.text)
    assert binary_metrics(val.frame["label"].to_numpy(), prob)["ap"] == pytest.approx(top)
    for key in ("train_loss", "val_loss", "val_acc", "val_auc", "epoch_seconds"):
        assert np.isfinite(history[0][key])


def test_nan_in_features_stops_training():
    train = synthetic(64)
    train.image[5, 3] = float("nan")
    with pytest.raises(TrainingDiverged, match="1 rows"):
        fit("advanced", train, None, TP)
    train = synthetic(64)
    train.text[0, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match="text"):
        fit("nsnet", train, None, TP)


def test_nan_in_validation_features_stops_training():
    train, val = synthetic(64), synthetic(16)
    val.image[2, 1] = float("nan")
    with pytest.raises(TrainingDiverged, match="validation image"):
        fit("advanced", train, val, TP)


def test_diverging_loss_stops_training():
    train = synthetic(64)
    train.image.mul_(1e18)  # finite but absurd features, no normalisation, the largest lr
    with pytest.raises(TrainingDiverged, match="loss became"):
        fit("advanced", train, None, dataclasses.replace(TP, lr=10.0, normalize=False,
                                                         mapper="end_to_end"))


def test_training_needs_both_classes():
    train = synthetic(40)
    with pytest.raises(ValueError, match="real and fake"):
        fit("composite_probe", train.subset(train.frame["label"].to_numpy() == 1), None, TP)


def test_alignment_term_is_weighted_and_zero_disables_it():
    train = synthetic(32)
    tp = dataclasses.replace(TP, mapper="end_to_end")  # the seed's mapper: the term trains it
    res = fit("advanced", train, None, dataclasses.replace(tp, epochs=1))
    x, t, y = train.image, train.text, train.labels
    with torch.no_grad():
        out = res.model(x, t)
    base = head_loss("advanced", out, y, x, dataclasses.replace(tp, align_weight=0.0))
    aligned = head_loss("advanced", out, y, x, dataclasses.replace(tp, align_weight=0.5))
    target = torch.nn.functional.normalize(x, dim=-1)
    mse = torch.nn.functional.mse_loss(out.semantic, target)
    assert float(aligned - base) == pytest.approx(0.5 * float(mse), rel=1e-5)
    assert float(mse) > 0


def test_memory_mapped_features_equal_in_memory_ones(built_cache, monkeypatch):
    p = built_cache.params
    in_ram = load_features(p, built_cache.manifest, built_cache.features)
    monkeypatch.setattr(features, "_available_ram", lambda: 1)
    mapped = load_features(p, built_cache.manifest, built_cache.features)
    assert isinstance(mapped.image, MappedRows) and isinstance(in_ram.image, torch.Tensor)
    assert mapped.image.shape == in_ram.image.shape
    assert torch.equal(mapped.image[0:len(mapped)].float(), in_ram.image)
    assert torch.equal(mapped.text[0:len(mapped)].float(), in_ram.text)
    # subsets stay mapped and gather the same rows, in the requested (shuffled) order
    tr_ram, tr_map = select(in_ram, "train"), select(mapped, "train")
    assert isinstance(tr_map.image, MappedRows)
    perm = torch.randperm(len(tr_ram), generator=torch.Generator().manual_seed(0))
    assert torch.equal(tr_map.image[perm].float(), tr_ram.image[perm])
    # and training on them gives the very same model
    tp = dataclasses.replace(TP, epochs=2, batch_size=16)
    va_ram, va_map = select(in_ram, "val"), select(mapped, "val")
    for kind in ("nsnet", "advanced"):
        a = fit(kind, tr_ram, va_ram, tp)
        b = fit(kind, tr_map, va_map, tp)
        assert a.history[-1]["val_ap"] == b.history[-1]["val_ap"]
        assert all(torch.equal(v, b.model.state_dict()[k])
                   for k, v in a.model.state_dict().items())


def test_train_stage_logs_every_epoch_and_reports_nsnet_rank(built_cache, tmp_path):
    params = dataclasses.replace(
        built_cache.params,
        train=dataclasses.replace(built_cache.params.train, head="nsnet", epochs=3, nsnet_k=8))
    info = run_train(params, built_cache.manifest, built_cache.features, tmp_path / "model",
                     tmp_path / "plots" / "log.csv")
    log = pd.read_csv(tmp_path / "plots" / "log.csv")
    assert log["epoch"].tolist() == [1, 2, 3]
    assert {"train_loss", "val_ap", "val_acc", "val_loss"} <= set(log.columns)
    assert info.nsnet_k == 8 and 0 < info.explained_variance <= 1
    assert info.best_epoch == int(log.loc[log["val_ap"].idxmax(), "epoch"]) or \
        log["val_ap"].nunique() < 3


def test_compare_prints_one_table_for_all_heads(built_cache, tmp_path):
    out = run_compare(built_cache.params, built_cache.manifest, built_cache.features,
                      out_json=tmp_path / "compare.json")
    assert set(out["heads"]) == {"composite_probe", "nsnet", "advanced"}
    table = format_comparison(out)
    lines = table.splitlines()
    assert all(h in lines[0] for h in ("composite_probe", "nsnet", "advanced"))
    sources = sorted(out["heads"]["composite_probe"]["test"]["per_source"])
    end = lines.index("")
    assert [ln.split()[0] for ln in lines[2:end]] == [*sources, "mean"]
    mean_acc = out["heads"]["advanced"]["test"]["mean"]["acc"]
    assert f"{100 * mean_acc:.1f}" in lines[end - 1]
    k = out["heads"]["nsnet"]["training"]["nsnet_k"]
    assert f"nsnet: top-{k} caption directions removed" in table
    assert (tmp_path / "details" / "compare.json").exists()
    assert json.loads((tmp_path / "compare.json").read_text())["nsnet_ap"] == round(
        out["heads"]["nsnet"]["test"]["mean"]["ap"], 4)
