"""params.yaml belongs to the user: the demo is built from it with only the demo's values
changed, and the test suite does not depend on what the user wrote in it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from nsnet.config import params_from_dict
from nsnet.data.demo_data import DEMO_VALUES, TINY_MODELS, make_workspace
from nsnet.data.params_text import edit_params_text
from tests.conftest import ROOT, default_raw


def _commented(raw: dict) -> str:
    """A params file of ``raw``, one line per key (flow values), each with a comment, as
    the shipped params.yaml is laid out."""
    lines = []
    for i, (section, values) in enumerate(raw.items()):
        if not isinstance(values, dict):
            lines.append(f"{section}: {json.dumps(values)}  # note {i}")
            continue
        lines.append(f"{section}:")
        lines += [f"  {key}: {json.dumps(value)}  # note {i}.{j}"
                  for j, (key, value) in enumerate(values.items())]
    return "\n".join(lines) + "\n"


def test_demo_values_are_only_what_must_differ():
    """Tiny models (no download), the demo data, the demo's protocol and decision, and the
    heads it compares (with fewer univfd crops): nothing else (no worker counts, batch sizes
    or training settings of its own)."""
    allowed = set(TINY_MODELS) | {"data.roots", "compare.heads", "recipes.crop_augmentations"}
    for key in DEMO_VALUES:
        assert key in allowed or key.split(".")[0] in ("protocol", "evaluate"), key
    assert set(TINY_MODELS) <= set(DEMO_VALUES)


def test_demo_workspace_is_the_params_file_with_the_demo_values_set(tmp_path):
    raw = default_raw()
    raw["train"]["epochs"] = 7  # the user's own choice survives into the demo
    text = _commented(raw)
    ws = make_workspace(tmp_path / "ws", ROOT, params=text, n_real=2, n_fake_each=1, size=64)
    written = (ws / "params.yaml").read_text()
    want = yaml.safe_load(text)
    for key, value in DEMO_VALUES.items():
        section, name = key.split(".")
        want[section][name] = value
    assert yaml.safe_load(written) == want
    assert params_from_dict(want).train.epochs == 7
    notes = [line.split("#")[1] for line in text.splitlines() if "#" in line]
    assert all(note in written for note in notes)  # every comment is kept
    assert written.startswith("# The demo: the project's params.yaml with these values changed")
    assert sorted((ws / "data" / "demo").rglob("*.png"))


def test_editing_keeps_comments_and_falls_back_to_a_correct_file():
    text = "data:\n  roots: [a]   # where\n  layout: auto\ntrain:\n  lr: 0.1 # rate\n"
    out = edit_params_text(text, {"data.roots": ["data/mine", "b"], "train.lr": 0.5})
    assert out == ("data:\n  roots: [data/mine, b]  # where\n  layout: auto\n"
                   "train:\n  lr: 0.5 # rate\n")
    # a block-style value cannot be edited in place: the mapping is rewritten, still correct
    out = edit_params_text("data:\n  roots:\n    - a\n", {"data.roots": ["b"]})
    assert yaml.safe_load(out) == {"data": {"roots": ["b"]}}
    out = edit_params_text("seed: 0\n", {"train.epochs": 3})  # an absent section is added
    assert yaml.safe_load(out) == {"seed": 0, "train": {"epochs": 3}}


# The edits the README and docs/usage.md describe (own folders, a preset, the head, the
# decision, the backbones), all at once.
README_EDITS = {"data.roots": ["data/mine"], "protocol.preset": "genimage",
                "train.head": "nsnet", "train.epochs": 50, "evaluate.threshold": "val_acc",
                "evaluate.calibration": "platt", "clip.arch": "ViT-B-16",
                "caption.max_new_tokens": 20}
SUITE_IN_COPY = ("tests/test_config.py", "tests/test_first_contact.py", "tests/test_cli.py",
                 "tests/test_docs.py", "tests/test_user_params.py")


@pytest.mark.slow
def test_the_suite_holds_after_the_readme_edits_of_params_yaml(tmp_path):
    """A copy of the project whose params.yaml is edited as the README says: the tests that
    deal with parameters, the CLI and the docs pass there (the whole suite cannot read the
    file: conftest's guard fails any test that opens it)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    copy = tmp_path / "project"
    for rel in filter(None, listed):
        if (ROOT / rel).is_file() and rel != "params.yaml":  # the user's own: not read here
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, copy / rel)
    shipped = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True,
                             text=True).stdout  # the committed file, as a clone has it
    params = copy / "params.yaml"
    params.write_text(edit_params_text(shipped or yaml.safe_dump(default_raw()), README_EDITS))
    edited = params_from_dict(yaml.safe_load(params.read_text()))
    assert (edited.data.roots[0].path, edited.train.head) == ("data/mine", "nsnet")
    if shipped:
        assert "# folders to scan" in params.read_text()  # edited in place, comments kept
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env.update(PYTHONPATH=str(copy), HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
                          "not slow", *SUITE_IN_COPY], cwd=copy, env=env, capture_output=True,
                         text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout.splitlines()[-1]
