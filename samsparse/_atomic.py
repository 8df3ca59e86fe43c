"""Atomic file writes: write a temporary file next to the target, then ``os.replace`` it.

The target never holds a partial file; on any exception (KeyboardInterrupt
included) the temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["TMP_SUFFIX", "atomic_path", "tmp_name"]

TMP_SUFFIX = ".samsparse-tmp"


def tmp_name(final: Path) -> Path:
    """The temporary path used for ``final``: hidden, in the same folder, tagged with this process id."""
    return final.with_name(f".{final.name}.{os.getpid()}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, before_replace: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is moved onto ``path``.

    ``before_replace(tmp)`` runs after the caller wrote ``tmp`` and before the rename.
    """
    final = Path(path).expanduser()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(final)
    try:
        yield tmp
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
