"""Published reference numbers carried by the benchmark presets, and their look-up."""

from __future__ import annotations

import pytest

from nsnet.data.presets import PRESETS, Published, published_results


def test_every_preset_carries_a_sourced_table():
    for name, preset in PRESETS.items():
        methods = [p.method for p in preset.published]
        assert len(methods) == len(set(methods)), name  # one row per method and preset
        for p in preset.published:
            assert isinstance(p, Published) and p.source and "@" in p.source
            for v in (p.acc, p.ap, p.real_acc, p.fake_acc):
                assert v is None or 0.0 <= v <= 100.0
            assert p.acc is not None or p.ap is not None
            assert p.same_protocol or p.note, f"{name}/{p.method}: say how the protocol differs"


def test_look_up_by_preset_and_method():
    effort = published_results("aigibench-2", "effort")
    assert [(p.acc, p.ap, p.real_acc, p.fake_acc) for p in effort] == [(77.1, 87.2, 96.9, 57.1)]
    assert [p.method for p in published_results("aigibench-2")] == \
        ["univfd", "c2p-clip", "aide", "effort", "dgs-net"]
    assert published_results("genimage", "univfd")[0].acc == 79.5
    rine = published_results("ufd", "rine")[0]
    assert (rine.acc, rine.ap, rine.same_protocol) == (91.5, 98.8, False)
    assert published_results("ufd", "nsnet") == []  # not verifiable: no table read
    assert published_results("aigibench-1") == []
    assert published_results("none") == []
    with pytest.raises(ValueError, match="unknown protocol.preset"):
        published_results("imagenet")
