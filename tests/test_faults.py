"""Faults: SIGKILL mid-stage, write errors, and caches made with other settings.

Kills use a real ``nsnet`` subprocess and one image per shard, so some shards are committed in
``cache/.work/<stage>-<fingerprint>/`` when the process dies; the resumed run must end with
exactly the cache of an uninterrupted run. Write errors come from a real file size limit
(RLIMIT_FSIZE) in the subprocess.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from pipeline.atomic import atomic_path, write_json
from pipeline.data.demo_data import make_demo_images
from pipeline.extraction.extract_stage import Outputs, run_extract
from stages.cli import main
from tests.conftest import ROOT, build_cache, tiny_params, tiny_raw, write_params

SHARDED = {"compute": {"shard_size": 1}}


def nsnet(args: list[str], cwd: Path, fsize: int | None = None) -> subprocess.Popen:
    """Start the real CLI; with ``fsize`` no file it writes may exceed that many bytes."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes then fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "stages.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit if fsize else None)


def committed(workdir_glob: str, cwd: Path, suffix: str) -> list[Path]:
    return sorted(p for p in (cwd / "cache" / ".work").glob(f"{workdir_glob}/*{suffix}")
                  if not p.name.startswith("."))


def kill_after(proc: subprocess.Popen, cwd: Path, stage: str, suffix: str, n: int) -> int:
    """SIGKILL ``proc`` once ``n`` shards of ``stage`` are committed; return how many were."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if len(committed(f"{stage}-*", cwd, suffix)) >= n:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the stage ended before it could be killed"
    return len(committed(f"{stage}-*", cwd, suffix))


@pytest.fixture(scope="module")
def small_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small") / "images"
    make_demo_images(root, n_real=3, n_fake_each=1, size=96, seed=5)
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_images):
    """An uninterrupted run with one image per shard (the same settings the kills use)."""
    return build_cache(tmp_path_factory.mktemp("reference"), tiny_params(small_images, **SHARDED))


def _workspace(tmp_path: Path, reference, demo_images: Path, *files: str) -> Path:
    (tmp_path / "cache").mkdir()
    write_params(tmp_path / "params.yaml", tiny_raw(demo_images, **SHARDED))
    for name in files:
        shutil.copy(reference.workdir / "cache" / name, tmp_path / "cache" / name)
    return tmp_path


def _resume(cwd: Path, stage: str) -> int:
    proc = nsnet([stage], cwd)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return int(re.search(r"\((\d+) reused from an interrupted run\)", err).group(1))


def _settings(provenance: bytes | str) -> dict:
    """Provenance without the code version (the tree may change while tests run)."""
    prov = json.loads(provenance)
    return {k: v for k, v in prov.items() if k not in ("code_version", "nsnet_version")}


def test_sigkill_during_extract_resumes_to_the_same_cache(tmp_path, reference, small_images):
    cwd = _workspace(tmp_path, reference, small_images, "manifest.parquet")
    total = len(pq.read_table(reference.manifest).to_pandas().query("status == 'ok'"))
    done = kill_after(nsnet(["extract"], cwd), cwd, "extract", ".h5", 2)
    assert 2 <= done < total
    for name in ("selections.h5", "captions.parquet", "embeddings.h5"):
        assert not (cwd / "cache" / name).exists(), name
    # Another setting makes another fingerprint: the killed run's shards are not mixed in.
    alt = tmp_path / "alt"
    shutil.copytree(cwd / "cache", alt / "cache")
    other = tiny_params(small_images, compute={"shard_size": 1, "precision": "bf16"})
    out = Outputs.at(*(alt / "cache" / n for n in ("selections.h5", "captions.parquet",
                                                   "embeddings.h5")))
    summary = run_extract(other, alt / "cache" / "manifest.parquet", out, alt / "cache")
    assert summary.reused_shards == 0 and summary.images == total
    # A half-written shard of the killed run (its temporary name) must never be read.
    workdir = next((cwd / "cache" / ".work").glob("extract-*"))
    (workdir / ".000999-deadbeef.h5.x1y2.partial").write_bytes(b"\x89HDF\r\n partial")
    assert _resume(cwd, "extract") == done
    for name in ("selections.h5", "embeddings.h5"):
        with h5py.File(cwd / "cache" / name) as got, \
                h5py.File(reference.workdir / "cache" / name) as want:
            assert set(got) == set(want)
            for key in got:
                np.testing.assert_array_equal(got[key][:], want[key][:], err_msg=key)
            assert _settings(got.attrs["provenance"]) == _settings(want.attrs["provenance"])
    got = pq.read_table(cwd / "cache" / "captions.parquet")
    want = pq.read_table(reference.captions)
    assert got.to_pandas().equals(want.to_pandas())
    assert _settings(got.schema.metadata[b"nsnet"]) == _settings(want.schema.metadata[b"nsnet"])
    assert not list((cwd / "cache" / ".work").glob("extract-*"))  # finished work is cleaned


# ----------------------------------------------------------------------------- write errors


def test_atomic_write_failure_keeps_previous_file(tmp_path):
    target = tmp_path / "report.json"
    write_json(target, {"good": True})
    before = target.read_bytes()
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"half": ')
        raise RuntimeError("writer crashed")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def _fsize_run(cwd: Path, args: list[str], limit: int) -> subprocess.CompletedProcess:
    proc = nsnet(args, cwd, fsize=limit)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _assert_failed_cleanly(proc, workdir, output, before: bytes) -> None:
    """Exit 1 with the write-error message, previous output byte-identical, no temp files."""
    assert proc.returncode == 1, proc.stderr
    assert "could not write" in proc.stderr and "File too large" in proc.stderr
    assert "left intact" in proc.stderr and "Traceback" not in proc.stderr
    assert output.read_bytes() == before
    assert not [p for p in (workdir / "cache").iterdir() if p.name.endswith(".partial")]


def test_disk_full_during_index_keeps_previous_manifest(tmp_path, built_cache):
    """The manifest cannot be written (file size limit): exit 1, clear message, old one kept."""
    work = built_cache.copy_to(tmp_path / "w")
    write_params(work.workdir / "params.yaml", tiny_raw(demo_root(built_cache)))
    before = work.manifest.read_bytes()
    assert len(before) > 4096
    proc = _fsize_run(work.workdir, ["index"], 4096)
    _assert_failed_cleanly(proc, work.workdir, work.manifest, before)


def test_disk_full_during_extract_keeps_previous_embeddings(tmp_path, built_cache):
    """HDF5 outputs: a clean exit 1 (HDF5's own failure path can crash the process at exit).
    A new caption length re-captions and re-embeds the text; the new embeddings file cannot be
    written, so the previous one stays as it was."""
    work = built_cache.copy_to(tmp_path / "w")
    write_params(work.workdir / "params.yaml", tiny_raw(demo_root(built_cache)))
    before = work.features.read_bytes()
    assert len(before) > 16_384
    proc = _fsize_run(work.workdir, ["extract", "--set", "caption.max_new_tokens=3"], 16_384)
    _assert_failed_cleanly(proc, work.workdir, work.features, before)


def test_disk_full_during_train_keeps_previous_bundle(tmp_path, built_cache):
    work = built_cache.copy_to(tmp_path / "w")
    write_params(work.workdir / "params.yaml", tiny_raw(demo_root(built_cache),
                                                        train={"epochs": 1}))
    first = CliRunner().invoke(main, ["train", "--params", str(work.workdir / "params.yaml"),
                                      "--manifest", str(work.manifest), "--features",
                                      str(work.features), "--out",
                                      str(work.workdir / "models" / "detector"), "--log",
                                      str(work.workdir / "plots" / "log.csv")])
    assert first.exit_code == 0, first.output
    bundle = work.workdir / "models" / "detector"
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    assert (bundle / "model.safetensors").stat().st_size > 8192
    proc = _fsize_run(work.workdir, ["train", "--set", "train.seed=3"], 8192)
    assert proc.returncode == 1, proc.stderr
    assert "could not write" in proc.stderr and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before


def demo_root(cache) -> str:
    return cache.params.data.roots[0].path


# ----------------------------------------------------------------------------- other settings


def test_extract_never_mixes_parts_made_with_other_settings(tmp_path, built_cache):
    """Another patch size: selections and image embeddings are recomputed from the images;
    only the parts that do not depend on it (captions, text embeddings) are reused."""
    work = built_cache.copy_to(tmp_path / "w")
    with h5py.File(work.features) as f:
        image_before, text_before = f["image"][:], f["text"][:]
    params = tiny_params(demo_root(built_cache), patches={"size": 16})
    summary = run_extract(params, work.manifest, work.outputs, work.workdir / "cache")
    assert summary.reused_parts == ["captions", "text"], summary.line()
    with h5py.File(work.selections) as f:
        assert json.loads(f.attrs["provenance"])["patch_spec"]["size"] == 16
    with h5py.File(work.features) as f:
        assert not np.array_equal(f["image"][:], image_before)
        np.testing.assert_array_equal(f["text"][:], text_before)
        requests = json.loads(f.attrs["requests"])
    assert requests["image"]["selections"] != requests["text"]["captions"]


def test_train_and_evaluate_refuse_embeddings_of_another_clip(tmp_path, built_cache):
    work = built_cache.copy_to(tmp_path / "w")
    raw = tiny_raw(demo_root(built_cache), clip={"arch": "ViT-B-32", "pretrained": "openai"})
    write_params(work.workdir / "params.yaml", raw)
    common = ["--params", str(work.workdir / "params.yaml"), "--manifest", str(work.manifest),
              "--features", str(work.features)]
    model = work.workdir / "models" / "detector"
    res = CliRunner().invoke(main, ["train", *common, "--out", str(model), "--log",
                                    str(tmp_path / "log.csv")])
    assert res.exit_code == 1 and "ProvenanceMismatch" in res.output
    assert "clip_arch: cache has 'tiny', requested 'ViT-B-32'" in res.output
    assert not model.exists()
    metrics = tmp_path / "metrics.json"
    res = CliRunner().invoke(main, ["evaluate", *common, "--model", str(model), "--out",
                                    str(metrics), "--plots", str(tmp_path / "plots")])
    assert res.exit_code == 1 and "clip_arch: cache has 'tiny'" in res.output
    assert not metrics.exists()


def test_dvc_params_invalidate_only_affected_stages():
    """dvc reruns a stage when one of its params changes: each stage lists exactly its own."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

    def uses(stage: str, key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in stages[stage].get("params", []))

    assert uses("extract", "clip.arch") and uses("extract", "clip.pretrained")
    assert uses("extract", "patches.size") and uses("extract", "caption.model")
    assert not uses("index", "clip.arch") and not uses("index", "caption.model")
    for stage in ("index", "extract", "views"):
        assert not uses(stage, "train.lr"), stage
    # Settings that change how fast, not what, never invalidate the extraction.
    for key in ("clip.batch_size", "caption.batch_size", "compute.num_workers",
                "compute.torch_threads", "compute.shard_size", "data.num_workers"):
        assert not uses("extract", key) and not uses("views", key), key
