"""The extract stage on a real dask cluster (2 worker processes, CPU, tiny models) give
exactly the in-process cache, with one model load per worker process, not per shard."""

from __future__ import annotations

import math
import pickle

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.extraction.extract_stage import Outputs, compute_shard, ok_rows, run_extract
from pipeline.extraction.sharding import plan
from tests.conftest import tiny_params

distributed = pytest.importorskip("dask.distributed")

pytestmark = pytest.mark.slow


def _arrays(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in f}


def test_shards_and_compute_functions_pickle(built_cache, tmp_path):
    rows = ok_rows(built_cache.manifest)
    inputs = list(zip(rows["path_raw"].tolist(), [None] * len(rows), strict=True))
    shards = plan("extract", rows["id"].tolist(), inputs, 16, tmp_path,
                  {"blip_model": "tiny"}, ".h5")
    assert pickle.loads(pickle.dumps(shards)) == shards
    assert pickle.loads(pickle.dumps(compute_shard)) is compute_shard


def test_dask_cluster_matches_in_process_run(built_cache, demo_images, tmp_path):
    # Workers advertise a GPU resource (one task per worker at a time), as on a GPU cluster;
    # compute.num_workers=1 checks decoding falls back in-process in daemonic dask workers.
    params = tiny_params(demo_images, compute={"num_workers": 1, "shard_size": 16})
    ws = built_cache.copy_to(tmp_path / "ws")
    cache = ws.workdir / "cache"
    out = Outputs.at(cache / "dask-selections.h5", cache / "dask-captions.parquet",
                     cache / "dask-embeddings.h5")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  resources={"GPU": 1}, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        addr = cluster.scheduler_address
        summary = run_extract(params, ws.manifest, out, cache, addr)

        def model_loads() -> tuple[int, int, int, int]:
            from pipeline.backbones.blip import load_blip
            from pipeline.backbones.clip import load_clip

            b, c = load_blip.cache_info(), load_clip.cache_info()
            return b.misses, b.hits + b.misses, c.misses, c.hits + c.misses

        loads = client.run(model_loads)
    n_shards = math.ceil(len(ok_rows(ws.manifest)) / 16)
    assert summary.shards == n_shards and summary.reused_shards == 0
    assert len(loads) == 2
    for stage, (miss, call) in {"blip": (0, 1), "clip": (2, 3)}.items():
        calls = [v[call] for v in loads.values()]
        misses = [v[miss] for v in loads.values()]
        assert sum(calls) == n_shards, stage  # every shard ran on a worker
        assert all(m == (1 if c else 0) for m, c in zip(misses, calls, strict=True)), stage
        assert max(calls) >= 2, stage  # so at least one worker reused its loaded model

    for mine, theirs in ((out.selections, ws.selections), (out.embeddings, ws.embeddings)):
        a, b = _arrays(theirs), _arrays(mine)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{mine.name}:{k}")
    assert pq.read_table(out.captions).select(["id", "caption", "model"]).equals(
        pq.read_table(ws.captions).select(["id", "caption", "model"]))
