"""The experiment decided once (``nsnet.data.experiment``) and mean ± std over seeds
(``nsnet.evaluation.seeds``, ``train.seeds``) through train, evaluate, compare and
evaluate-degraded."""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import tiny_raw, write_params

from nsnet.config import ParamsError, params_from_dict
from nsnet.data.experiment import matrix_sources, resolve_experiment, seeds_of
from nsnet.evaluation.compare_stage import format_comparison, run_compare
from nsnet.evaluation.evaluate_stage import format_evaluation, run_evaluate
from nsnet.evaluation.seeds import over_seeds
from nsnet.extraction.cached_features import load_features, select
from nsnet.heads.train_stage import run_train, training_sets
from nsnet.stages.cli import main


def manifest_frame(rows: list[tuple[str, str, str, int, str]]) -> pd.DataFrame:
    """(id, source, split, label, status) rows as a manifest frame."""
    df = pd.DataFrame(rows, columns=["id", "source", "split", "label", "status"])
    df["path"] = [f"{s}/{i}.png" for i, s in zip(df["id"], df["source"], strict=True)]
    return df


GENIMAGE = manifest_frame([
    *[(f"sd{i}{s}{y}", "SDv1.4", s, y, "ok") for i in range(2) for s in ("train", "val", "test")
      for y in (0, 1)],
    *[(f"adm{i}{s}{y}", "ADM", s, y, "ok") for i in range(2) for s in ("train", "val", "test")
      for y in (0, 1)],
    ("sd0test0", "ADM", "test", 0, "duplicate"),  # ADM's test real is SD's: shared
    ("sd0train0", "ADM", "test", 0, "duplicate"),  # a copy across splits: never a member
    ("sd1test0", "ADM", "test", 1, "duplicate"),  # another label: never a member
])


def _params(**protocol: object) -> object:
    raw = tiny_raw("unused", protocol={"train_sources": [], "test_sources": [],
                                       "degradations": [], **protocol})
    return params_from_dict(raw)


def test_rows_by_the_preset_or_the_named_sources():
    exp = resolve_experiment(_params(preset="genimage"), GENIMAGE)
    ok = GENIMAGE[GENIMAGE["status"] == "ok"].reset_index(drop=True)
    assert exp.train_sources == ("SDv1.4",) and exp.test_sources is None
    assert set(ok[exp.train_mask(ok)]["id"]) == {f"sd{i}train{y}" for i in range(2)
                                                  for y in (0, 1)}
    assert set(ok[exp.val_mask(ok)]["source"]) == {"SDv1.4"}
    assert set(ok[exp.test_mask(ok)]["source"]) == {"SDv1.4", "ADM"}
    assert exp.preset_missing == ()  # GenImage trains on SD v1.4 alone, and it is here
    named = resolve_experiment(_params(train_sources=["ADM"], test_sources=["SDv1.4"]),
                               GENIMAGE)
    assert set(ok[named.train_mask(ok)]["source"]) == {"ADM"}
    assert set(ok[named.test_mask(ok)]["source"]) == {"SDv1.4"}
    with pytest.raises(ValueError, match=r"unknown source\(s\) \['sd14'\].*SDv1.4"):
        resolve_experiment(_params(train_sources=["sd14"]), GENIMAGE)


def test_a_preset_without_its_training_sources_fails_only_when_training():
    exp = resolve_experiment(_params(preset="ufd"), GENIMAGE)
    ok = GENIMAGE[GENIMAGE["status"] == "ok"]
    assert not exp.val_mask(ok).any() and exp.test_mask(ok).any()  # scoring still works
    assert len(exp.preset_missing) == 20
    with pytest.raises(ValueError, match="protocol.preset 'ufd' trains on airplane"):
        exp.train_mask(ok)


def test_duplicate_members_same_split_and_label_only():
    exp = resolve_experiment(_params(), GENIMAGE)
    ok = GENIMAGE[GENIMAGE["status"] == "ok"].reset_index(drop=True)
    idx, rows = exp.member_rows(ok)
    assert rows[["id", "source"]].values.tolist() == [["sd0test0", "ADM"]]
    assert ok.loc[idx[0], "id"] == "sd0test0" and ok.loc[idx[0], "source"] == "SDv1.4"
    # the rows of one degraded copy (test rows only) get the same member
    test = ok[ok["split"] == "test"].reset_index(drop=True)
    assert exp.member_rows(test)[1]["id"].tolist() == ["sd0test0"]


def test_matrix_sources_and_the_train_side_reals():
    demo = manifest_frame([
        *[(f"r{s}{i}", "real", s, 0, "ok") for s in ("train", "val", "test") for i in range(2)],
        *[(f"{g}{s}{i}", g, s, 1, "ok") for g in ("tconv", "nn_conv")
          for s in ("train", "val", "test") for i in range(2)],
    ])
    exp = resolve_experiment(_params(train_sources=["real", "tconv"]), demo)
    assert matrix_sources(exp, []) == ["nn_conv", "tconv"]
    assert exp.with_training(["nn_conv"]).train_sources == ("nn_conv", "real")
    assert matrix_sources(exp, ["NN-conv"]) == ["nn_conv"]  # matched like preset names
    with pytest.raises(ValueError, match="matrix.train_sources: bilinear has no generated"):
        matrix_sources(exp, ["bilinear"])
    # sources with their own reals (GenImage) are trained alone
    gi = resolve_experiment(_params(preset="genimage"), GENIMAGE)
    assert gi.with_training(["ADM"]).train_sources == ("ADM",)


def test_train_seeds_validated_and_defaulting_to_train_seed():
    assert seeds_of(_params()) == (0,)
    raw = tiny_raw("unused", train={"seed": 4})
    assert seeds_of(params_from_dict(raw)) == (4,)
    for seeds, needle in (([0, 0], "train.seeds: seeds repeat"), ([-1], "train.seeds[0]"),
                          ([True], "train.seeds[0]"), ("0,1", "train.seeds")):
        raw = tiny_raw("unused", train={"seeds": seeds})
        with pytest.raises(ParamsError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            params_from_dict(raw)


def test_over_seeds_is_mean_and_sample_std():
    runs = {0: {"n": 5, "acc": 0.5, "rows": ["a"], "per": {"x": {"ap": 0.9}}},
            1: {"n": 5, "acc": 0.7, "rows": ["a"], "per": {"x": {"ap": 0.6}}},
            2: {"n": 5, "acc": 0.9, "rows": ["a"], "per": {"x": {"ap": float("nan")}}}}
    out = over_seeds(runs)
    assert out["acc"] == pytest.approx(0.7) and out["std"]["acc"] == pytest.approx(
        statistics.stdev([0.5, 0.7, 0.9]))
    assert out["n"] == 5 and "n" not in out["std"] and out["rows"] == ["a"]
    assert out["per"]["x"]["ap"] == pytest.approx(0.75)  # NaN (no fakes in a seed) skipped
    assert out["seeds"] == [0, 1, 2]
    assert over_seeds({3: runs[0]}) is runs[0]  # one seed: exactly as it was


def test_training_sets_are_the_experiments_rows(built_cache):
    fs = load_features(built_cache.params, built_cache.manifest, built_cache.features)
    params = dataclasses.replace(built_cache.params, protocol=dataclasses.replace(
        built_cache.params.protocol, train_sources=["real", "tconv"]))
    train, val = training_sets(params, fs)
    want = select(fs, "train", ["real", "tconv"]), select(fs, "val", ["real", "tconv"])
    assert train.frame["id"].tolist() == want[0].frame["id"].tolist()
    assert val.frame["id"].tolist() == want[1].frame["id"].tolist()


# ----------------------------------------------------------------------------- seeds end to end
SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def seeded(built_cache, tmp_path_factory):
    work = tmp_path_factory.mktemp("seeds")
    p = built_cache.params
    params = dataclasses.replace(p, train=dataclasses.replace(p.train, epochs=3, seeds=SEEDS))
    info = run_train(params, built_cache.manifest, built_cache.features, work / "model",
                     work / "log.csv")
    out = run_evaluate(params, built_cache.manifest, built_cache.features, work / "model",
                       work / "metrics.json", work / "plots")
    return work, params, info, out


def test_train_writes_one_bundle_per_seed(seeded):
    work, params, info, _ = seeded
    config = json.loads((work / "model" / "config.json").read_text())
    assert config["training"]["params"]["seed"] == 0  # the bundle is the first seed's
    for seed in SEEDS[1:]:
        other = json.loads((work / "model" / "seeds" / str(seed) / "config.json").read_text())
        assert other["training"]["params"]["seed"] == seed
    assert set(info.seeds) == set(SEEDS)
    log = pd.read_csv(work / "log.csv")
    assert log["epoch"].tolist() == [1, 2, 3]  # the first seed's epochs: one line to plot


def test_evaluate_is_the_mean_and_std_of_each_seed_alone(seeded, built_cache, tmp_path):
    work, params, _, out = seeded
    alone = {}
    for seed in SEEDS:
        src = work / "model" if seed == 0 else work / "model" / "seeds" / str(seed)
        dst = tmp_path / f"m{seed}"
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("seeds"))
        one = dataclasses.replace(params, train=dataclasses.replace(params.train, seeds=[],
                                                                    seed=seed))
        alone[seed] = run_evaluate(one, built_cache.manifest, built_cache.features, dst,
                                   tmp_path / f"m{seed}.json", tmp_path / f"p{seed}")
        assert "std" not in alone[seed]["test"]
        assert out["per_seed"][seed]["test"]["mean"] == alone[seed]["test"]["mean"]
    keys = ("acc", "real_acc", "fake_acc", "ap", "auc")
    for key in keys:
        values = [alone[s]["test"]["mean"][key] for s in SEEDS]
        assert out["test"]["mean"][key] == pytest.approx(statistics.mean(values))
        assert out["test"]["std"]["mean"][key] == pytest.approx(statistics.stdev(values))
    assert any(out["test"]["std"]["mean"][k] > 0 for k in keys)  # the seeds do differ
    summary = json.loads((work / "metrics.json").read_text())
    assert summary["n_seeds"] == 3 and summary["acc"] == pytest.approx(
        out["test"]["mean"]["acc"], abs=1e-4)
    assert summary["acc_std"] == pytest.approx(out["test"]["std"]["mean"]["acc"], abs=1e-4)
    text = format_evaluation(out)
    assert "mean ± std over 3 seeds" in text and "±" in text.split("mean ")[1]
    # the curves are the bundle's (first seed's) scores, as a single-seed run writes them
    assert (work / "plots" / "roc.csv").read_text() == (tmp_path / "p0" / "roc.csv").read_text()


def test_compare_matches_evaluate_over_the_same_seeds(seeded, built_cache, tmp_path):
    _, params, _, out = seeded
    res = run_compare(params, built_cache.manifest, built_cache.features,
                      (params.train.head,), tmp_path / "compare.json")
    test = res["heads"][params.train.head]["test"]
    assert test["mean"] == pytest.approx(out["test"]["mean"])
    assert test["std"]["mean"] == pytest.approx(out["test"]["std"]["mean"])
    summary = json.loads((tmp_path / "compare.json").read_text())
    assert set(summary) == {f"{params.train.head}_ap", f"{params.train.head}_ap_std",
                            "n_seeds"}
    printed = format_comparison(res)
    assert "mean ± std over 3 seeds" in printed and "±" in printed.splitlines()[2]
    assert max(map(len, printed.splitlines())) <= 120


def test_missing_seed_bundle_is_one_clear_error(seeded, built_cache, tmp_path):
    work, params, _, _ = seeded
    more = dataclasses.replace(params, train=dataclasses.replace(params.train,
                                                                 seeds=[*SEEDS, 9]))
    with pytest.raises(FileNotFoundError, match="no bundle of seed 9.*retrain"):
        run_evaluate(more, built_cache.manifest, built_cache.features, work / "model",
                     tmp_path / "m.json", tmp_path / "plots")
    swapped = dataclasses.replace(params, train=dataclasses.replace(params.train,
                                                                    seeds=[1, 0, 2]))
    with pytest.raises(ValueError, match="trained with seed 0, but train.seeds puts seed 1"):
        run_evaluate(swapped, built_cache.manifest, built_cache.features, work / "model",
                     tmp_path / "m.json", tmp_path / "plots")


def test_cli_says_how_many_seeds(built_cache, tmp_path):
    raw = json.loads(json.dumps(built_cache.params.to_dict()))
    raw["train"].update({"epochs": 2, "seeds": [3, 4]})
    params_file = write_params(tmp_path / "params.yaml", raw)
    common = ["--params", str(params_file), "--manifest", str(built_cache.manifest),
              "--features", str(built_cache.features)]
    runner = CliRunner()
    res = runner.invoke(main, ["train", *common, "--out", str(tmp_path / "m"),
                               "--log", str(tmp_path / "log.csv")])
    assert res.exit_code == 0, res.output
    assert "2 seeds [3, 4]: best val AP" in res.output and "seed 3's bundle" in res.output
    res = runner.invoke(main, ["evaluate", *common, "--model", str(tmp_path / "m"),
                               "--out", str(tmp_path / "metrics.json"),
                               "--plots", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    assert "test (%; mean ± std over 2 seeds)" in res.output
    # one seed in the list prints as a single run always has
    raw["train"]["seeds"] = [3]
    write_params(params_file, raw)
    res = runner.invoke(main, ["evaluate", *common, "--model", str(tmp_path / "m"),
                               "--out", str(tmp_path / "metrics.json"),
                               "--plots", str(tmp_path / "plots")])
    assert res.exit_code == 0 and "±" not in res.output, res.output
    assert set(json.loads((tmp_path / "metrics.json").read_text())) == {
        "acc", "ap", "threshold"}


def test_evaluate_degraded_over_seeds(seeded, built_cache, tmp_path):
    from nsnet.evaluation.degraded_eval_stage import run_evaluate_degraded

    work, params, _, out = seeded
    results = run_evaluate_degraded(params, built_cache.manifest, built_cache.features,
                                    work / "model", tmp_path)
    assert results["clean"]["mean"] == pytest.approx(out["test"]["mean"])
    assert results["clean"]["std"]["mean"]["ap"] == pytest.approx(
        out["test"]["std"]["mean"]["ap"])
    summary = json.loads((tmp_path / "degradations.json").read_text())
    # no degradations in this workspace: the one DVC metric is empty, the seeds are counted
    assert summary == {"degraded_ap": None, "degraded_ap_std": None, "n_seeds": 3}
