"""Fail fast when model weights are not on this machine, with instructions to get them.

Loading real weights may need the Hugging Face hub. On an offline machine a download attempt can
hang on DNS or a firewall; we probe the hub once, with a hard time limit, and if it is not
reachable we switch the HF libraries to offline mode so a missing file errors immediately.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
from collections.abc import Iterator
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
