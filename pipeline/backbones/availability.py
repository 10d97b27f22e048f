"""Fail fast when model weights are not on this machine, with instructions to get them.

Loading real weights may need the Hugging Face hub. On an offline machine a download attempt can
hang on DNS or a firewall; we probe the hub once, with a hard time limit, and if it is not
reachable we switch the HF libraries to offline mode so a missing file errors immediately.
``require_models`` checks every model a run needs before any work, without loading weights, and
names all the missing ones in one ``ModelUnavailable``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse


class ModelUnavailable(RuntimeError):
    """Weights for a configured model are not available locally and cannot be downloaded."""


def _hub_host() -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return urlparse(endpoint).hostname or "huggingface.co"


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """True if the HF hub answers a TCP connect within ``timeout`` seconds (DNS included)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((_hub_host(), 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def ensure_offline_if_unreachable() -> bool:
    """Set ``HF_HUB_OFFLINE=1`` when the hub is unreachable; return whether we are online."""
    online = hub_reachable()
    if not online:
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:  # huggingface_hub reads the variable at import time; update its constant too
            import huggingface_hub.constants as hc

            hc.HF_HUB_OFFLINE = True
        except (ImportError, AttributeError):
            pass
    return online


@contextlib.contextmanager
def quiet_root_logging() -> Iterator[None]:
    """Silence module-level ``logging.error`` calls of model libraries for a while.

    open_clip reports a failed download with ``logging.error``, which configures the root logger
    on the fly and prints a stray ``ERROR:root:`` line before our own message (which already
    contains the cause).
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = [logging.NullHandler()]
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.handlers = handlers
        root.setLevel(level)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (library errors can run to pages)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


CLIP_FILE_HELP = """\
clip.pretrained {path!r} is a local file that could not be loaded as {arch!r} weights.
It must be an open_clip / OpenAI checkpoint of that architecture holding only tensors (it is
loaded with torch.load(weights_only=True), so pickled objects are refused).
Cause: {cause}
"""

BLIP_FOLDER_HELP = """\
caption.model {path!r} is a local folder but does not hold a loadable BLIP captioning model.
It needs the files `save_pretrained` writes: config.json, model.safetensors (or
pytorch_model.bin) and the processor files (preprocessor_config.json, tokenizer files).
Cause: {cause}
"""

CLIP_HELP = """\
CLIP weights for {arch!r} / {pretrained!r} are not available on this machine{why}.
To get them, on a machine with internet access run
    python -c "import open_clip; open_clip.create_model('{arch}', pretrained='{pretrained}')"
which stores them in the Hugging Face cache (~/.cache/huggingface, or $HF_HOME); copy that
folder to this machine. Or download the checkpoint file and set `clip.pretrained` to its path.
For a quick offline run use the built-in random backbone: `clip.arch: tiny`, `clip.pretrained: ""`.
"""

BLIP_HELP = """\
BLIP weights {model!r} are not available on this machine{why}.
To get them, on a machine with internet access run
    hf download {model}
(or `python -c "from transformers import BlipForConditionalGeneration as B; \
B.from_pretrained('{model}')"`), then copy the Hugging Face cache (~/.cache/huggingface, or
$HF_HOME) to this machine, or set `caption.model` to a local folder holding the model files.
For a quick offline run use the built-in random captioner: `caption.model: tiny`.
"""


# ----------------------------------------------------------------------------- up-front check
CLIP_GET = ("python -c \"import open_clip; "
            "open_clip.create_model('{arch}', pretrained='{pretrained}')\"")
CLIP_OR = "or set {key} to a checkpoint file of {arch}"
BLIP_GET = "hf download {model}"
BLIP_OR = "or set {key} to a folder written by save_pretrained"
BUNDLE_HINT = ("A bundle scores only with the backbones it was trained on (`backbones` in its "
               "config.json).")
OPEN_CLIP_WEIGHTS = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
BLIP_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Need:
    """One model a run needs: ``kind`` ``clip`` (``name`` an open_clip architecture,
    ``pretrained`` a tag or a checkpoint file) or ``blip`` (``name`` a hub id or a folder), the
    settings that name it (``keys``) and whether the user may point them at local files."""

    kind: str
    name: str
    pretrained: str = ""
    keys: tuple[str, ...] = ()
    settable: bool = True

    @property
    def label(self) -> str:
        what = f"CLIP {self.name!r} / {self.pretrained!r}" if self.kind == "clip" \
            else f"BLIP {self.name!r}"
        return f"{what} ({', '.join(self.keys)})"


def hub_offline() -> bool:
    """True when a missing file cannot be downloaded: ``HF_HUB_OFFLINE`` set (read now, not at
    import) or the hub unreachable (``hub_reachable``)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return True
    return not hub_reachable()


def _cached(repo: str, filenames: Iterable[str], cache_dir: str | None) -> bool:
    """Whether any of ``filenames`` of hub repo ``repo`` is in the HF cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(repo, f, cache_dir=cache_dir), str)
                   for f in filenames)
    except ValueError:  # not a valid repo id
        return False


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id or tag (ids are ``name`` or ``org/name``)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and \
        os.sep in name


def _clip_problem(need: Need, cache_dir: str | None) -> tuple[str, bool]:
    """(what is wrong, whether a download fixes it), or ("", False) when the weights are here."""
    arch, pretrained, key = need.name, need.pretrained, need.keys[-1] if need.keys else ""
    if arch == "tiny":
        return (f"{key} must be empty with the built-in 'tiny' backbone", False) \
            if pretrained else ("", False)
    import open_clip

    # open_clip's own architectures, and the built-in configs that clip.py registers with it
    builtin = Path(__file__).parent / "configs" / f"{arch}.json"
    if arch not in open_clip.list_models() and not builtin.is_file():
        return "not an open_clip architecture (see open_clip.list_models())", False
    if pretrained and os.path.isfile(pretrained):
        return "", False
    if _looks_like_path(pretrained):
        return f"{key}: no such file", False
    if not pretrained:
        return f"{key} is empty: set a pretrained tag (e.g. openai) or a checkpoint file", False
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        return (f"{key} {pretrained!r} is neither a file nor a known tag of {arch} (known: "
                f"{', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'})", False)
    if cfg.get("file"):
        return ("", False) if os.path.isfile(cfg["file"]) else (f"no file {cfg['file']}", False)
    if cfg.get("hf_hub"):  # open_clip prefers the hub's copy to the url's
        repo, filename = os.path.split(cfg["hf_hub"])  # "org/model/" or "org/model/file.bin"
        names = {filename} if filename else set(OPEN_CLIP_WEIGHTS)
        names |= {n[:-4] + ".safetensors" for n in names if n.endswith((".bin", ".pth"))}
        found = _cached(repo, sorted(names), cache_dir)
    else:
        found = os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"),
                                            os.path.basename(cfg.get("url", "")) or "-"))
    return ("", False) if found else ("not in the Hugging Face cache", True)


def _blip_problem(need: Need, cache_dir: str | None) -> tuple[str, bool]:
    """(what is wrong, whether a download fixes it), or ("", False) when the model is here."""
    name = need.name
    if name == "tiny":
        return "", False
    if os.path.isdir(name):
        return ("", False) if os.path.isfile(os.path.join(name, "config.json")) \
            else ("a local folder without config.json", False)
    if _looks_like_path(name):
        return "no such folder", False
    if _cached(name, ["config.json"], cache_dir) and _cached(name, BLIP_WEIGHTS, cache_dir):
        return "", False
    return "not in the Hugging Face cache", True


def _switch_keys() -> str:
    from nsnet.data.demo_data import TINY_MODELS

    empty = '""'  # what a shell and --set both read as an empty string
    return " ".join(f"--set {k}={v or empty}" for k, v in TINY_MODELS.items())


def require_models(needs: Iterable[Need], what: str, hint: str | None = None,
                   cache_dir: str | None = None) -> None:
    """Check, without loading any weights, that every model in ``needs`` can be loaded here.

    A model is available when its local file or folder exists, its files are in the Hugging
    Face cache (``cache_dir``, default the libraries' own) or open_clip's ``~/.cache/clip``, or
    the hub is reachable. Raises one ``ModelUnavailable`` naming every missing model (``what``
    needs them) with how to get each, then ``hint`` (default: the params keys that switch to
    the built-in offline backbones). Same models named by several keys are checked once.
    """
    merged: dict[tuple[str, str, str], Need] = {}
    for n in needs:
        key = (n.kind, n.name, n.pretrained)
        old = merged.get(key)
        merged[key] = n if old is None else Need(*key, old.keys + n.keys, n.settable)
    problems: list[str] = []
    downloads = 0
    offline: bool | None = None
    for need in merged.values():
        check = _clip_problem if need.kind == "clip" else _blip_problem
        problem, fetch = check(need, cache_dir)
        if problem and fetch:
            offline = hub_offline() if offline is None else offline
            if not offline:
                continue  # downloaded on first use
            downloads += 1
            fill = {"arch": need.name, "pretrained": need.pretrained, "model": need.name,
                    "key": need.keys[-1] if need.keys else "the setting"}
            get = [CLIP_GET, CLIP_OR] if need.kind == "clip" else [BLIP_GET, BLIP_OR]
            problem += "".join(f"\n      {line.format(**fill)}"
                               for line in get[:2 if need.settable else 1])
        if problem:
            problems.append(f"  * {need.label}: {problem}")
    if not problems:
        return
    from huggingface_hub import constants

    cache = cache_dir or constants.HF_HUB_CACHE
    lines = [f"{what} needs {len(problems)} model(s) that cannot be loaded here (checked before "
             "any work started):", *problems]
    if downloads:
        lines.append(f"The Hugging Face hub is not reachable from here and {cache} lacks them: "
                     "run the commands on a machine with internet access and copy its Hugging "
                     "Face cache (~/.cache/huggingface, or $HF_HOME) here.")
    lines.append(hint if hint is not None else "For a quick offline run on the built-in random "
                 f"backbones: {_switch_keys()} (or the same keys in params.yaml).")
    raise ModelUnavailable("\n".join(lines))
