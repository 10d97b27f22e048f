"""The extract stage on a real dask cluster (2 worker processes, CPU, tiny models): the workers
write segments straight into the store, which then holds exactly the in-process features, with
one model load per worker process, not per shard."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from nsnet.extraction.extract_stage import compute_shard, ok_rows, plan_extract, run_extract
from tests.conftest import read_part, tiny_params

distributed = pytest.importorskip("dask.distributed")

pytestmark = pytest.mark.slow


def test_shards_and_compute_functions_pickle(built_cache, tmp_path):
    params = tiny_params(built_cache.params.data.roots[0].path, compute={"shard_size": 16})
    shards = plan_extract(params, built_cache.manifest, tmp_path / "features").shards
    assert len(shards) > 1
    again = pickle.loads(pickle.dumps(shards))
    assert [s.kinds for s in again] == [s.kinds for s in shards]
    assert [[w.image_id for w in s.images] for s in again] == \
        [[w.image_id for w in s.images] for s in shards]
    assert again[0].settings == shards[0].settings and again[0].runtime == shards[0].runtime
    assert pickle.loads(pickle.dumps(compute_shard)) is compute_shard


def test_dask_cluster_matches_in_process_run(built_cache, demo_images, tmp_path):
    # Workers advertise a GPU resource (one task per worker at a time), as on a GPU cluster;
    # compute.num_workers=1 checks decoding falls back in-process in daemonic dask workers.
    params = tiny_params(demo_images, compute={"num_workers": 1, "shard_size": 16})
    store = tmp_path / "cache" / "features"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  resources={"GPU": 1}, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        addr = cluster.scheduler_address
        summary = run_extract(params, built_cache.manifest, store, addr)

        def model_loads() -> tuple[int, int, int, int]:
            from nsnet.backbones.blip import load_blip
            from nsnet.backbones.clip import load_clip

            b, c = load_blip.cache_info(), load_clip.cache_info()
            return b.misses, b.hits + b.misses, c.misses, c.hits + c.misses

        loads = client.run(model_loads)
    ids = ok_rows(built_cache.manifest)["id"].tolist()
    n_shards = math.ceil(len(ids) / 16)
    assert summary.shards == n_shards and summary.reused == 0 and summary.computed == len(ids)
    assert len(loads) == 2
    for stage, (miss, call) in {"blip": (0, 1), "clip": (2, 3)}.items():
        calls = [v[call] for v in loads.values()]
        misses = [v[miss] for v in loads.values()]
        assert sum(calls) == n_shards, stage  # every shard ran on a worker
        assert all(m == (1 if c else 0) for m, c in zip(misses, calls, strict=True)), stage
        assert max(calls) >= 2, stage  # so at least one worker reused its loaded model
    for kind in ("selection", "caption", "image:0", "text"):
        mine = read_part(store, params, kind, ids)
        theirs = read_part(built_cache.features, built_cache.params, kind, ids)
        assert mine.keys() == theirs.keys()
        for k in mine:
            assert mine[k].dtype == theirs[k].dtype
            np.testing.assert_array_equal(mine[k], theirs[k], err_msg=f"{kind}:{k}")
