"""What a batch job does to the files it creates: it holds a lock on its output for its whole
life (a second job on the same output refuses at once, rather than interleaving its rows), and
it never follows a symbolic link where it creates or rewrites a file (a link planted at
``out.npy.partial`` would otherwise have its target overwritten)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

__all__ = ["output_lock", "open_new", "open_existing", "write_text_replacing"]


@contextlib.contextmanager
def output_lock(output: Path):
    """Hold ``<output>.lock`` (an exclusive flock) while the job runs; ValueError at once if
    another job holds it. The lock file is removed when the job ends."""
    lock_path = output.with_name(output.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another job is writing {output} (it holds {lock_path}): wait "
                             "for it to end, or choose another output") from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _no_link(path: Path) -> None:
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link; a job writes its own files and never "
                         "through a link: remove it (or pass --overwrite to start afresh)")


def open_new(path: Path):
    """``path`` created empty for reading and writing (replacing a regular file there), never
    through a symbolic link."""
    _no_link(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            _no_link(path)
        raise
    return os.fdopen(fd, "w+b")


def open_existing(path: Path):
    """``path`` (a regular file, not a link) opened for reading and writing in place."""
    _no_link(path)
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    return os.fdopen(fd, "r+b")


def write_text_replacing(path: Path, text: str) -> None:
    """``text`` written to a fresh sibling and renamed over ``path`` (which may be a link: the
    rename replaces the link itself, never its target)."""
    tmp = path.with_name(path.name + ".tmp")
    with open_new(tmp) as f:
        f.write(text.encode("utf-8"))
    os.replace(tmp, path)
