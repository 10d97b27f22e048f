"""Faults: SIGKILL mid-stage, write errors, and caches made with other settings.

Kills use a real ``nsnet`` subprocess and one image per shard, so some shards are committed as
segments of the feature store when the process dies; the resumed run must end with exactly the
features of an uninterrupted run. Write errors come from a real file size limit
(RLIMIT_FSIZE) in the subprocess.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from nsnet.atomic import atomic_path, write_json
from nsnet.data.demo_data import make_demo_images
from nsnet.data.manifest import read_manifest
from nsnet.extraction.extract_stage import run_extract
from nsnet.heads.train_stage import run_train
from nsnet.stages.cli import main
from tests.conftest import (
    ROOT,
    build_cache,
    part_of,
    read_part,
    tiny_params,
    tiny_raw,
    write_params,
)

SHARDED = {"compute": {"shard_size": 1}}
# Limits that only catch a hung run: a loaded 2-core CI machine running the suite on parallel
# workers can take minutes for what takes seconds alone.
HANG = 900


def nsnet(args: list[str], cwd: Path, fsize: int | None = None) -> subprocess.Popen:
    """Start the real CLI; with ``fsize`` no file it writes may exceed that many bytes."""

    def limit() -> None:
        # Ctrl-C as in a terminal, whatever an earlier test in this worker did to SIGINT (a
        # child inherits an ignored SIGINT, and then never sees the tests' Ctrl-C)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes then fail with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "nsnet.stages.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit)


def committed(cwd: Path) -> list[Path]:
    """The selection segments committed so far (one per finished one-image shard)."""
    return sorted((cwd / "cache" / "features" / "selection").glob("*/*.h5"))


def kill_after(proc: subprocess.Popen, cwd: Path, n: int) -> int:
    """SIGKILL ``proc`` once ``n`` shards are committed; return how many were."""
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline and proc.poll() is None:
        if len(committed(cwd)) >= n:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.communicate(timeout=HANG)
    assert proc.returncode == -signal.SIGKILL, "the stage ended before it could be killed"
    return len(committed(cwd))


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


def _resume(cwd: Path) -> str:
    proc = nsnet(["extract"], cwd)
    _, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 0, err
    return err


KINDS = ("selection", "caption", "image:0", "text")


def test_sigkill_during_extract_resumes_to_the_same_cache(tmp_path, reference, small_images):
    cwd = _workspace(tmp_path, reference, small_images, "manifest.parquet")
    ids = read_manifest(reference.manifest, only_ok=True)["id"].tolist()
    done = kill_after(nsnet(["extract"], cwd), cwd, 2)
    assert 2 <= done < len(ids)
    store = cwd / "cache" / "features"
    assert not list(store.rglob("*.partial"))  # temporaries live outside the store
    # Another setting makes other parts: the killed run's segments are not mixed in.
    alt = tmp_path / "alt"
    shutil.copytree(cwd / "cache", alt / "cache")
    other = tiny_params(small_images, compute={"shard_size": 1, "precision": "bf16"})
    summary = run_extract(other, alt / "cache" / "manifest.parquet", alt / "cache" / "features")
    assert summary.reused == 0 and summary.computed == len(ids)
    # A half-written segment of the killed run (its temporary) must never be read.
    (cwd / "cache" / ".tmp").mkdir(exist_ok=True)
    (cwd / "cache" / ".tmp" / ".deadbeef-1.h5.x1y2.partial").write_bytes(b"\x89HDF\r\n part")
    err = _resume(cwd)  # each part resumes on its own: the selections committed are reused
    assert f"selection {len(ids) - done}," in err, err
    params = tiny_params(small_images, **SHARDED)
    for kind in KINDS:
        got = read_part(store, params, kind, ids)
        want = read_part(reference.features, params, kind, ids)
        for key in got:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{kind}/{key}")
        made = part_of(store, params, kind).info()["settings"]
        assert made == part_of(reference.features, params, kind).info()["settings"]


def test_ctrl_c_during_extract_says_a_rerun_resumes(tmp_path, reference, small_images):
    """SIGINT (Ctrl-C) mid-run: exit 130 with one line saying what was kept and that a rerun
    resumes (no "Aborted!", no traceback); the rerun computes only what is missing."""
    cwd = _workspace(tmp_path, reference, small_images, "manifest.parquet")
    proc = nsnet(["extract"], cwd)
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline and proc.poll() is None and len(committed(cwd)) < 2:
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 130, err
    assert "interrupted after" in err and "committed to the store" in err, err
    assert "rerun of `nsnet extract` (or `dvc repro`) resumes" in err, err
    assert "Traceback" not in err and "Aborted!" not in err
    done = len(committed(cwd))
    err = _resume(cwd)
    total = len(read_manifest(reference.manifest, only_ok=True))
    assert f"selection {total - done}," in err, err


def test_cache_deleted_during_extract_fails_clearly_and_a_rerun_rebuilds(
        tmp_path, reference, small_images):
    """`rm -rf cache/` while extract runs: the run ends with a short message naming the store
    (no traceback, no raw h5py error) or finishes; a rerun rebuilds exactly the reference."""
    cwd = _workspace(tmp_path, reference, small_images, "manifest.parquet")
    proc = nsnet(["extract"], cwd)
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline and proc.poll() is None and len(committed(cwd)) < 2:
        time.sleep(0.002)
    shutil.rmtree(cwd / "cache", ignore_errors=True)  # as `rm -rf`, racing the writer
    _, err = proc.communicate(timeout=HANG)
    assert "Traceback" not in err and "h5py" not in err and "HDF5" not in err, err
    if proc.returncode:  # one message naming the store; where the race hit decides which
        errors = [line for line in err.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and "cache" in errors[0], err
    (cwd / "cache").mkdir(exist_ok=True)
    shutil.copy(reference.manifest, cwd / "cache" / "manifest.parquet")
    _resume(cwd)
    ids = read_manifest(reference.manifest, only_ok=True)["id"].tolist()
    params = tiny_params(small_images, **SHARDED)
    for kind in KINDS:
        got = read_part(cwd / "cache" / "features", params, kind, ids)
        want = read_part(reference.features, params, kind, ids)
        for key in got:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{kind}/{key}")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop
def test_ctrl_c_inside_a_finalizer_stops_the_run_without_a_traceback(capfd):
    """A Ctrl-C that lands in a finalizer or a weakref callback: raised there, CPython would
    print "Exception ignored in ..." with a traceback and drop it (seen under load as a
    Ctrl-C'd extract that ran to the end, then as a traceback on stderr). The handler only
    remembers it; the run stops at the shard's next batch, saying what was kept."""
    import gc

    from nsnet.extraction.sharding import Interrupted, run

    class SignalsWhenCollected:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs inside this finalizer

    class Shard:
        samples = 1

    done = []

    def compute(shard: Shard, progress) -> int:
        if len(done) == 1:
            SignalsWhenCollected()  # collected at once: the signal arrives in __del__
            gc.collect()
        done.append(shard)
        progress(1)  # the batch boundary: the remembered Ctrl-C is raised here
        return 1

    # Python's own Ctrl-C handler, as the CLI has it (an earlier test may have changed it)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(Interrupted, match="interrupted after 1 of 5 shards"):
            run([Shard() for _ in range(5)], compute)
        assert len(done) == 2  # the second shard's batch was the last work done
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capfd.readouterr().err
    assert "Exception ignored" not in err and "Traceback" not in err, err


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
    out, err = proc.communicate(timeout=HANG)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _assert_failed_cleanly(proc, workdir, output, before: bytes) -> None:
    """Exit 1 with the write-error message, previous output byte-identical, no temp files."""
    assert proc.returncode == 1, proc.stderr
    assert "could not write" in proc.stderr and "File too large" in proc.stderr
    assert "left intact" in proc.stderr and "Traceback" not in proc.stderr
    assert _snapshot(output) == before
    assert not [p for p in (workdir / "cache").rglob("*.partial")]


def _snapshot(path: Path) -> dict[str, bytes] | bytes:
    """A file's bytes, or every file of a folder (the feature store) by relative path."""
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
                if p.is_file()}
    return path.read_bytes()


def test_disk_full_during_index_keeps_previous_manifest(tmp_path, built_cache):
    """The manifest cannot be written (file size limit): exit 1, clear message, old one kept.
    (Another patch size makes index rewrite it: the same rows and settings leave it as it is.)"""
    work = built_cache.copy_to(tmp_path / "w")
    write_params(work.workdir / "params.yaml", tiny_raw(demo_root(built_cache)))
    before = work.manifest.read_bytes()
    assert len(before) > 4096
    proc = _fsize_run(work.workdir, ["index", "--rescan", "--set", "patches.size=16"], 4096)
    _assert_failed_cleanly(proc, work.workdir, work.manifest, before)


def test_disk_full_during_extract_keeps_every_committed_segment(tmp_path, built_cache):
    """HDF5 segments: a clean exit 1 (HDF5's own failure path can crash the process at exit).
    A new caption length re-captions and re-embeds the text; its segments cannot be written,
    so the store stays exactly as it was, and nothing partial is left in it."""
    work = built_cache.copy_to(tmp_path / "w")
    write_params(work.workdir / "params.yaml", tiny_raw(demo_root(built_cache)))
    before = _snapshot(work.features)
    proc = _fsize_run(work.workdir, ["extract", "--set", "caption.max_new_tokens=3"], 4096)
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
    """Another patch size: selections and image embeddings are computed from the images into
    parts of their own; the captions and text embeddings, which do not depend on it, are
    reused."""
    work = built_cache.copy_to(tmp_path / "w")
    ids = read_manifest(work.manifest, only_ok=True)["id"].tolist()
    old = tiny_params(demo_root(built_cache))
    params = tiny_params(demo_root(built_cache), patches={"size": 16})
    summary = run_extract(params, work.manifest, work.features)
    assert summary.missing == {"selection": len(ids), "image:0": len(ids)}, summary.line()
    sel = part_of(work.features, params, "selection")
    assert sel.info()["settings"]["patches"]["size"] == 16
    assert sel.path != part_of(work.features, old, "selection").path
    assert not np.array_equal(read_part(work.features, params, "image:0", ids)["emb"],
                              read_part(work.features, old, "image:0", ids)["emb"])
    assert part_of(work.features, params, "text").path == part_of(work.features, old,
                                                                  "text").path


def test_train_and_evaluate_refuse_embeddings_of_another_clip(tmp_path, built_cache):
    work = built_cache.copy_to(tmp_path / "w")
    raw = tiny_raw(demo_root(built_cache), clip={"arch": "ViT-B-32", "pretrained": "openai"})
    write_params(work.workdir / "params.yaml", raw)
    common = ["--params", str(work.workdir / "params.yaml"), "--manifest", str(work.manifest),
              "--features", str(work.features)]
    model = work.workdir / "models" / "detector"
    res = CliRunner().invoke(main, ["train", *common, "--out", str(model), "--log",
                                    str(tmp_path / "log.csv")])
    assert res.exit_code == 1 and "StoreError" in res.output
    assert "no image features made with the current settings (clip ViT-B-32" in res.output
    assert not model.exists()
    # A bundle of the store's CLIP, evaluated with params naming another CLIP: refused too.
    run_train(built_cache.params, work.manifest, work.features, model, tmp_path / "l.csv")
    metrics = tmp_path / "metrics.json"
    res = CliRunner().invoke(main, ["evaluate", *common, "--model", str(model), "--out",
                                    str(metrics), "--plots", str(tmp_path / "plots")])
    assert res.exit_code == 1 and "clip ViT-B-32" in res.output, res.output
    assert not metrics.exists()


def test_dvc_params_invalidate_only_affected_stages():
    """dvc reruns a stage when one of its params changes: each stage lists exactly its own."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

    def uses(stage: str, key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in stages[stage].get("params", []))

    assert uses("extract", "clip.arch") and uses("extract", "clip.pretrained")
    assert uses("extract", "patches.size") and uses("extract", "caption.model")
    assert not uses("index", "clip.arch") and not uses("index", "caption.model")
    for stage in ("scan", "index", "extract"):
        assert not uses(stage, "train.lr"), stage
    # Settings that change how fast, not what, never invalidate the extraction.
    for key in ("clip.batch_size", "caption.batch_size", "compute.num_workers",
                "compute.torch_threads", "compute.shard_size", "data.num_workers"):
        assert not uses("extract", key), key
