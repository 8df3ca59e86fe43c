"""Resumable, verified checkpoint downloads (standard library ``urllib`` only).

A download goes to ``<dest_dir>/<filename>.part``. An interrupted download keeps
its ``.part`` file and the next call resumes it with an HTTP ``Range`` request
(a server that ignores ``Range`` and answers ``200`` is handled by restarting
from byte zero). Once all bytes are there the size and the SHA-256 (hashed
while streaming) are checked and only then is the file atomically renamed into
place with :func:`os.replace`, so the final path never holds a partial or
corrupt file. A small ``<filename>.sha256`` sidecar records a successful
verification so later calls return the cached file without re-hashing it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable, Union

from tqdm.auto import tqdm

from .registry import CheckpointInfo, get_checkpoint_info

__all__ = [
    "ChecksumError",
    "DownloadError",
    "cache_dir",
    "checkpoint_path",
    "download",
    "sha256_file",
]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20  # 1 MiB
_USER_AGENT = "samsparse-checkpoint-downloader/1"
_NETWORK_ERRORS = (
    urllib.error.URLError,  # includes HTTPError, connection refused, DNS failure
    http.client.HTTPException,  # IncompleteRead, RemoteDisconnected, BadStatusLine
    ConnectionError,
    TimeoutError,
    socket.timeout,
)

ProgressCallback = Callable[[int, Union[int, None]], None]


class ChecksumError(ValueError):
    """The downloaded bytes do not match the pinned size or SHA-256."""


class DownloadError(RuntimeError):
    """The checkpoint could not be fetched (offline, refused, HTTP error, cut off)."""


def cache_dir() -> Path:
    """Directory for downloaded checkpoints.

    ``$SAMSPARSE_HOME`` when set (``~`` is expanded), otherwise
    ``~/.cache/samsparse``. The directory is not created here.
    """
    env = os.environ.get("SAMSPARSE_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "samsparse"


def _resolve_info(name_or_info: str | CheckpointInfo) -> CheckpointInfo:
    if isinstance(name_or_info, CheckpointInfo):
        return name_or_info
    if isinstance(name_or_info, str):
        return get_checkpoint_info(name_or_info)
    raise TypeError(
        "download(name_or_info=...) expects a registry name such as 'vit_b' or a "
        f"CheckpointInfo, got {type(name_or_info).__name__}"
    )


def checkpoint_path(name_or_info: str | CheckpointInfo, dest_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`download` puts ``name_or_info`` (the file may not exist yet)."""
    info = _resolve_info(name_or_info)
    return Path(dest_dir).expanduser() / info.filename if dest_dir is not None else cache_dir() / info.filename


def sha256_file(path: str | os.PathLike, chunk_size: int = _CHUNK) -> str:
    """Lower-case hex SHA-256 of a file, read in ``chunk_size`` blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        _update_hash_from_file(h, f, chunk_size)
    return h.hexdigest()


def _update_hash_from_file(h: "hashlib._Hash", f: BinaryIO, chunk_size: int = _CHUNK) -> int:
    n = 0
    while True:
        block = f.read(chunk_size)
        if not block:
            return n
        h.update(block)
        n += len(block)


def _manual_hint(info: CheckpointInfo, url: str, final: Path) -> str:
    return (
        f"If this machine is offline or cannot reach the host, download the file manually "
        f"(e.g. `curl -L -o {final} {url}`, or with a browser on another machine) and pass "
        f"the local file path instead, e.g. samsparse.load('/path/to/{info.filename}') or "
        f"`--checkpoint /path/to/{info.filename}` on the command line. You can also point "
        f"$SAMSPARSE_HOME at a directory that already contains {info.filename}."
    )


def _sidecar(final: Path) -> Path:
    return final.with_name(final.name + ".sha256")


def _write_sidecar(final: Path, digest: str) -> None:
    try:
        _sidecar(final).write_text(f"{digest}  {final.name}\n", encoding="utf-8")
    except OSError as exc:  # read-only cache: verification simply is not remembered
        logger.debug("could not write %s: %s", _sidecar(final), exc)


def _read_sidecar(final: Path) -> str | None:
    try:
        text = _sidecar(final).read_text(encoding="utf-8").split()
    except OSError:
        return None
    return text[0].lower() if text else None


def _existing_is_valid(info: CheckpointInfo, final: Path) -> bool:
    """Check a file already at the final path (cheap when the sidecar vouches for it)."""
    size = final.stat().st_size
    if info.size is not None and size != info.size:
        logger.warning(
            "%s has %d bytes but %d are expected; downloading it again.", final, size, info.size
        )
        return False
    if info.sha256 is None:
        return True
    if _read_sidecar(final) == info.sha256:
        return True
    logger.info("verifying the SHA-256 of existing %s", final)
    digest = sha256_file(final)
    if digest != info.sha256:
        logger.warning(
            "%s has SHA-256 %s but %s is expected; downloading it again.", final, digest, info.sha256
        )
        return False
    _write_sidecar(final, digest)
    return True


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http/https only, checked)


def _finish(info: CheckpointInfo, part: Path, final: Path, digest: str, nbytes: int, url: str) -> Path:
    if info.size is not None and nbytes != info.size:
        _unlink(part)
        raise ChecksumError(
            f"Downloaded {nbytes} bytes for {info.filename} from {url} but {info.size} were "
            f"expected; the partial file was deleted. Run download(..., force=True) to retry, "
            f"or check that url= points at the right file."
        )
    if info.sha256 is not None:
        if digest != info.sha256:
            _unlink(part)
            raise ChecksumError(
                f"SHA-256 mismatch for {info.filename} downloaded from {url}: expected "
                f"{info.sha256}, got {digest}. The corrupt download was deleted and nothing was "
                f"written to {final}. Retry the download; if it keeps failing, the mirror serves "
                f"a different file (check url=)."
            )
    else:
        logger.warning(
            "No SHA-256 is pinned for %s; only its size was checked (%s).",
            info.filename,
            f"{nbytes} bytes" if info.size is not None else "size unknown too",
        )
    os.replace(part, final)
    if info.sha256 is not None:
        _write_sidecar(final, digest)
    logger.info("saved %s (%d bytes)", final, nbytes)
    return final


def download(
    name_or_info: str | CheckpointInfo,
    *,
    dest_dir: str | os.PathLike | None = None,
    url: str | None = None,
    progress: bool | ProgressCallback = True,
    force: bool = False,
    timeout: float = 30.0,
) -> Path:
    """Download (or find in the cache) a checkpoint and return its verified local path.

    Args:
        name_or_info: Registry name (``"vit_b"``, ``"vit_l"``, ``"vit_h"``, aliases)
            or a :class:`CheckpointInfo` (any URL/file, e.g. for tests).
        dest_dir: Directory for the file; defaults to :func:`cache_dir`. Created
            if missing.
        url: Override the download URL (mirrors, tests). The pinned size and
            SHA-256 of ``name_or_info`` are still enforced.
        progress: ``True`` shows a tqdm bar on stderr, ``False`` shows nothing; a
            callable ``progress(bytes_done, total_bytes_or_None)`` is called after
            every chunk instead of drawing a bar.
        force: Delete any existing final/partial file and download from scratch.
        timeout: Socket timeout in seconds for connecting and for each read.

    Returns:
        Path to ``<dest_dir>/<filename>``, whose size and SHA-256 match the pins.

    Raises:
        DownloadError: network failure (offline, refused, timeout, HTTP error,
            connection cut). The ``.part`` file is kept; calling again resumes.
        ChecksumError: the bytes do not match the pinned size/SHA-256. The
            ``.part`` file is deleted and the final path is left untouched.
    """
    info = _resolve_info(name_or_info)
    src = url if url is not None else info.url
    if not src.lower().startswith(("http://", "https://")):
        raise ValueError(f"download(url={src!r}) must be an http:// or https:// URL.")
    final = checkpoint_path(info, dest_dir)
    part = final.with_name(final.name + ".part")
    final.parent.mkdir(parents=True, exist_ok=True)

    if force:
        for p in (final, part, _sidecar(final)):
            _unlink(p)
    elif final.is_file():
        if _existing_is_valid(info, final):
            logger.debug("using cached %s", final)
            return final
        _unlink(final)
        _unlink(_sidecar(final))

    h = hashlib.sha256()
    offset = 0
    if part.is_file():
        offset = part.stat().st_size
        if info.size is not None and offset > info.size:
            logger.warning("%s is larger than the expected %d bytes; restarting.", part, info.size)
            _unlink(part)
            offset = 0
        elif offset:
            with open(part, "rb") as f:
                _update_hash_from_file(h, f)
            if info.size is not None and offset == info.size:
                logger.info("%s is already complete; verifying it.", part)
                return _finish(info, part, final, h.hexdigest(), offset, src)
            logger.info("resuming %s at byte %d", part, offset)

    try:
        resp = _open(src, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range not satisfiable: our partial file does not fit the remote file.
            logger.warning("server rejected resume at byte %d (HTTP 416); restarting.", offset)
            _unlink(part)
            h, offset = hashlib.sha256(), 0
            try:
                resp = _open(src, 0, timeout)
            except _NETWORK_ERRORS as exc2:
                raise _download_error(info, src, final, part, exc2) from exc2
        else:
            raise _download_error(info, src, final, part, exc) from exc
    except _NETWORK_ERRORS as exc:
        raise _download_error(info, src, final, part, exc) from exc

    with resp:
        status = getattr(resp, "status", None) or resp.getcode()
        mode = "ab"
        if offset and status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if m is None or int(m.group(1)) != offset:
                logger.warning(
                    "server answered Range with Content-Range %r; restarting from zero.",
                    resp.headers.get("Content-Range"),
                )
                resp.close()
                return download(info, dest_dir=final.parent, url=src, progress=progress, force=True, timeout=timeout)
        elif offset:
            logger.info("server ignored the Range request (HTTP %s); restarting from byte 0.", status)
            h, offset, mode = hashlib.sha256(), 0, "wb"
        length = resp.headers.get("Content-Length")
        total = info.size
        if total is None and length is not None and length.isdigit():
            total = offset + int(length)

        callback = progress if callable(progress) else None
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=info.filename,
            disable=(progress is False) or callback is not None,
            leave=True,
        )
        done = offset
        try:
            with open(part, mode) as out:
                while True:
                    try:
                        block = resp.read(_CHUNK)
                    except _NETWORK_ERRORS + (OSError,) as exc:
                        out.flush()
                        raise _download_error(info, src, final, part, exc) from exc
                    if not block:
                        break
                    out.write(block)
                    h.update(block)
                    done += len(block)
                    bar.update(len(block))
                    if callback is not None:
                        callback(done, total)
                    if info.size is not None and done > info.size:
                        break  # over-long answer: _finish reports it
        finally:
            bar.close()

    if info.size is not None and done < info.size:
        raise _download_error(
            info, src, final, part,
            ConnectionError(f"connection closed after {done} of {info.size} bytes"),
        )
    return _finish(info, part, final, h.hexdigest(), done, src)


def _download_error(info: CheckpointInfo, url: str, final: Path, part: Path, exc: BaseException) -> DownloadError:
    if isinstance(exc, urllib.error.HTTPError):
        reason = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        reason = str(exc.reason)
    else:
        reason = f"{type(exc).__name__}: {exc}"
    kept = part.stat().st_size if part.is_file() else 0
    resume = (
        f" The partial download ({kept} bytes) was kept at {part}; calling download() again "
        f"resumes it."
        if kept
        else ""
    )
    return DownloadError(
        f"Could not download {info.filename} from {url} ({reason}).{resume} "
        + _manual_hint(info, url, final)
    )
