"""Atomic file outputs: write to a temporary sibling, fsync, then rename over the target.

A reader therefore sees either the previous complete file or the new complete file, never a
partial one, and a failed write (disk full, permission) leaves the previous output intact.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class OutputWriteError(OSError):
    """Writing an output failed; the previous version of the file is untouched."""


def _current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode() -> int:
    """The mode a plain ``open(path, "w")`` would create: 0o666 less the umask (0644 under 022).

    ``tempfile.mkstemp`` creates 0600 files whatever the umask; outputs renamed from it would
    stay private, so colleagues could not read a shared model or results.
    """
    return 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, default_mode())  # the writer may have replaced tmp: chmod what is there
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OutputWriteError):
            raise
        raise OutputWriteError(
            exc.errno or 0,
            f"could not write {target}: {exc.strerror or exc}. "
            "The previous version of this output (if any) was left intact.",
        ) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def reserve_space(target: str | os.PathLike[str], nbytes: int) -> None:
    """Fail cleanly with ``OutputWriteError`` unless ``nbytes`` can be written next to ``target``.

    HDF5 reports a full disk from deep inside its C library, where a failed flush can leave
    the file open and crash the interpreter at exit; so HDF5 writers check for room first by
    allocating (then freeing) a scratch file of the size they are about to write.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".reserve", dir=target.parent)
    try:
        if nbytes > 0:
            os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # the filesystem cannot preallocate: nothing to check
        raise OutputWriteError(
            exc.errno or 0,
            f"could not write {target}: {exc.strerror or exc} (needs about {nbytes} bytes). "
            "The previous version of this output (if any) was left intact.",
        ) from exc
    finally:
        os.close(fd)
        os.unlink(name)


def write_json(target: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
