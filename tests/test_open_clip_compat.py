"""open_clip releases: 3.x (``weights_only``), 2.3x (``load_weights_only``), 2.2x (neither).

``nsnet.backbones.clip`` picks the keyword from ``create_model``'s signature. The first tests
check that choice on the three signature shapes and on the installed release. The last one runs
the real loading code (a local checkpoint, and a malicious one that must be refused) under
other open_clip releases installed side by side: ``make check-open-clip`` installs the floor
(2.24.0) and the last 2.x (2.32.0) into ``.floors/`` and runs it; without them it is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest

from nsnet.backbones.clip import open_clip_version, safe_load_kwargs

ROOT = Path(__file__).resolve().parents[1]
RELEASES = [p for p in os.environ.get("NSNET_OPEN_CLIP_RELEASES", "").split(os.pathsep) if p]


def _v3(model_name, pretrained=None, device="cpu", weights_only=True, **model_kwargs):
    """open_clip 3.x's create_model signature (the parts that matter here)."""


def _v2_3x(model_name, pretrained=None, device="cpu", load_weights_only=True, **model_kwargs):
    """open_clip 2.3x's."""


def _v2_24(model_name, pretrained=None, device="cpu", require_pretrained=False, **model_kwargs):
    """open_clip 2.24's: no keyword (torch.load's own default, weights_only=True since 2.6)."""


@pytest.mark.parametrize(("create_model", "expected"), [
    (_v3, {"weights_only": True}), (_v2_3x, {"load_weights_only": True}), (_v2_24, {}),
])
def test_safe_load_keyword_follows_the_signature(create_model, expected):
    assert safe_load_kwargs(create_model) == expected


def test_installed_release_gets_its_own_keyword():
    major = int(open_clip_version().split(".")[0])
    got = safe_load_kwargs(open_clip.create_model)
    assert got == ({"weights_only": True} if major >= 3 else {"load_weights_only": True})


SCRIPT = r"""
import pathlib, sys, tempfile
import numpy as np, open_clip, torch
from nsnet.backbones.availability import ModelUnavailable
from nsnet.backbones.clip import TINY_NAME, _register_tiny, load_clip

class Payload:
    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(sys.argv[1]),))

_register_tiny()
torch.manual_seed(0)
model = open_clip.create_model(TINY_NAME, pretrained=None)
tmp = pathlib.Path(tempfile.mkdtemp())
torch.save(model.state_dict(), tmp / "ok.pt")
clip = load_clip(TINY_NAME, str(tmp / "ok.pt"), "cpu")
x = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
with torch.no_grad():
    ref = model.eval().encode_image(
        (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - torch.tensor(clip.mean).view(
            1, 3, 1, 1)) / torch.tensor(clip.std).view(1, 3, 1, 1))
torch.testing.assert_close(clip.encode_images(x), ref)
torch.save({**model.state_dict(), "evil": Payload()}, tmp / "evil.pt")
try:
    load_clip(TINY_NAME, str(tmp / "evil.pt"), "cpu")
    raise SystemExit("malicious checkpoint was loaded")
except ModelUnavailable:
    pass
print("OK", clip.provenance["open_clip"])
"""


@pytest.mark.skipif(not RELEASES, reason="set NSNET_OPEN_CLIP_RELEASES (make check-open-clip)")
@pytest.mark.parametrize("release", RELEASES)
def test_other_open_clip_release_loads_checkpoints_safely(release, tmp_path):
    marker = tmp_path / "pwned"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([release, str(ROOT)]),
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(marker)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    version = res.stdout.split()[-1]
    assert Path(release).name.endswith(version)  # the release under test, not the venv's
    assert not marker.exists()
