"""Build and load the samsparse CUDA attention extension.

The extension (``csrc/``: one kernel translation unit per dtype x head dim, no
torch headers in them, plus a small torch binding) is compiled with
``torch.utils.cpp_extension.load`` and ninja on the first GPU call that needs it,
at most once per process, never at import. The build is cached under
``$SAMSPARSE_HOME/ext`` (default ``~/.cache/samsparse/ext``) in a folder keyed
by a hash of the sources, the GPU architectures, the torch version and the CUDA
version, so later processes only load the library.

Ahead of time (packagers, CI images)::

    python -m samsparse.backends.cuda.build            # archs 8.0;9.0 (+ the local GPU's)
    python -m samsparse.backends.cuda.build --arch 9.0

or :func:`build_extension` from Python. A JIT call reuses any cached build whose
architecture list contains the local GPU's.

Environment:

- ``SAMSPARSE_HOME`` — cache root.
- ``SAMSPARSE_CUDA_ARCH`` — architecture list for builds (``"9.0"``, ``"8.0;9.0"``);
  default: the local GPU's for JIT builds, ``8.0;9.0`` ahead of time.
- ``SAMSPARSE_CUDA_BUILD=0`` — never compile; use a cached build or report why not.
- ``SAMSPARSE_CUDA_KERNEL`` — ``wgmma`` (default: the Hopper kernel where it applies, see
  :func:`samsparse.backends.cuda.backend.kernel_variant`) or ``mma``. Builds for 9.0 compile sm_90a.
- ``MAX_JOBS`` — parallel compile jobs (torch's cpp_extension).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

__all__ = [
    "BuildError",
    "availability_reason",
    "build_extension",
    "cache_root",
    "ensure_loaded",
    "library_path",
    "load_reason",
    "main",
    "require",
    "source_digest",
]

log = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().with_name("csrc")
LIB_PREFIX = "samsparse_cuda"
DEFAULT_AOT_ARCHS = "8.0;9.0"
NVCC_FLAGS = [
    "-O3",
    "--use_fast_math",
    "-lineinfo",
    "--expt-relaxed-constexpr",
    "-DNDEBUG",
]


def standalone_nvcc_flags() -> list[str]:
    """nvcc flags of the extension build for a standalone compile of one csrc unit (no torch headers):
    ours plus those torch's cpp_extension adds to every nvcc call. For the offline kernel checks
    (tests/test_cuda_backend.py, scripts/cuda_kernel_resources.py), so they see the kernels the build makes."""
    from torch.utils import cpp_extension

    flags = ["-std=c++17", *NVCC_FLAGS]
    return flags + [f for f in cpp_extension.COMMON_NVCC_FLAGS if f not in flags]


class BuildError(RuntimeError):
    """The extension could not be built or loaded (the message says why)."""


_lock = threading.RLock()
_state: dict = {"tried": False, "loaded": False, "error": None, "path": None, "seconds": None, "built": False}


# ---------------------------------------------------------------------------- paths and keys
def cache_root() -> Path:
    """Where builds are cached: ``$SAMSPARSE_HOME/ext`` (default ``~/.cache/samsparse/ext``)."""
    home = os.environ.get("SAMSPARSE_HOME") or os.path.join("~", ".cache", "samsparse")
    return Path(home).expanduser() / "ext"


def sources() -> list[Path]:
    """Translation units of the extension: the kernel .cu files and the binding."""
    return sorted(CSRC.glob("*.cu")) + [CSRC / "binding.cpp"]


def headers() -> list[Path]:
    return sorted(CSRC.glob("*.h")) + sorted(CSRC.glob("*.cuh"))


def source_digest() -> str:
    """sha256 of every source and header (names and contents)."""
    h = hashlib.sha256()
    for path in sorted(sources() + headers()):
        h.update(path.name.encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    h.update(" ".join(NVCC_FLAGS).encode())
    return h.hexdigest()


def cuda_home() -> str | None:
    """A CUDA toolkit root with bin/nvcc and include/cuda_runtime.h (None if none is found).

    torch guesses ``dirname(dirname(which nvcc))``, which is wrong when ``nvcc`` on the
    PATH is a symlink or a wrapper script (e.g. /usr/local/bin/nvcc): resolve those too.
    """
    from torch.utils import cpp_extension

    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME]
    found = shutil.which("nvcc")
    if found:
        cands.append(os.path.dirname(os.path.dirname(os.path.realpath(found))))
        try:
            head = Path(found).read_bytes()[:4096]
            if head.startswith(b"#!"):
                m = re.search(rb"(/[^\s'\"]+)/bin/nvcc", head)
                if m:
                    cands.append(m.group(1).decode())
        except OSError:
            pass
    cands.append("/usr/local/cuda")
    cands += sorted((str(p) for p in Path("/usr/local").glob("cuda-*")), reverse=True)
    with_nvcc = [c for c in cands if c and (Path(c) / "bin" / "nvcc").exists()]
    for c in with_nvcc:
        if (Path(c) / "include" / "cuda_runtime.h").exists():
            return c
    return with_nvcc[0] if with_nvcc else None


def nvcc_path() -> str | None:
    home = cuda_home()
    if home:
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


_NVCC_VERSION: dict[str, str] = {}


def nvcc_version(nvcc: str | None = None) -> str:
    """``release X.Y`` of nvcc ("unknown" if it cannot be run)."""
    nvcc = nvcc or nvcc_path()
    if not nvcc:
        return "none"
    if nvcc not in _NVCC_VERSION:
        try:
            text = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
            m = re.search(r"release (\d+\.\d+)", text)
            _NVCC_VERSION[nvcc] = m.group(1) if m else "unknown"
        except (OSError, subprocess.SubprocessError):
            _NVCC_VERSION[nvcc] = "unknown"
    return _NVCC_VERSION[nvcc]


def _norm_archs(archs: str) -> list[str]:
    out = []
    for a in re.split(r"[;,\s]+", archs.strip()):
        if not a:
            continue
        a = a.replace("sm_", "").replace("compute_", "")
        if re.fullmatch(r"\d{2,3}", a):
            a = f"{a[:-1]}.{a[-1]}"
        if not re.fullmatch(r"\d+\.\d+(\+PTX)?", a):
            raise ValueError(f"bad CUDA architecture {a!r} (want e.g. '9.0' or '8.0;9.0')")
        if a not in out:
            out.append(a)
    if not out:
        raise ValueError("empty CUDA architecture list")
    return out


def compile_archs(archs: list[str]) -> list[str]:
    """The TORCH_CUDA_ARCH_LIST entries a build for ``archs`` compiles: 9.0 as 9.0a.

    The Hopper kernel (``csrc/fwd_sm90.cuh``) uses wgmma, which needs the arch-specific sm_90a target;
    an sm_90a binary runs on exactly the devices an sm_90 one does (compute capability 9.0). A
    ``9.0+PTX`` request keeps its PTX for later GPUs next to the sm_90a binary.
    """
    out: list[str] = []
    for a in archs:
        for c in (("9.0a", "9.0+PTX") if a == "9.0+PTX" else ("9.0a",) if a == "9.0" else (a,)):
            if c not in out:
                out.append(c)
    return out


def _arch_tag(archs: list[str]) -> str:
    return "_".join(a.replace(".", "").replace("+PTX", "p") for a in archs)


def build_key(archs: list[str]) -> str:
    """Hash of the sources, the architectures, the torch version and the CUDA version."""
    h = hashlib.sha256()
    for part in (source_digest(), ";".join(archs), torch.__version__, str(torch.version.cuda), nvcc_version()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _build_dir(archs: list[str]) -> Path:
    return cache_root() / f"{LIB_PREFIX}_{build_key(archs)}_{_arch_tag(archs)}"


def _lib_name(build_dir: Path) -> str:
    return build_dir.name


def _find_library(build_dir: Path) -> Path | None:
    """The built shared library in ``build_dir`` (cpp_extension may add a _vN suffix)."""
    if not build_dir.is_dir():
        return None
    libs = sorted(build_dir.glob(f"{_lib_name(build_dir)}*.so"), key=lambda p: p.stat().st_mtime)
    return libs[-1] if libs else None


def _local_arch() -> str | None:
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def _cached_build_for(arch: str) -> Path | None:
    """A cached library (same sources, torch and CUDA) whose arch list contains ``arch``."""
    root = cache_root()
    if not root.is_dir():
        return None
    tag = arch.replace(".", "")
    for d in sorted(root.glob(f"{LIB_PREFIX}_*")):
        parts = d.name[len(LIB_PREFIX) + 1 :].split("_")
        if len(parts) < 2 or tag not in parts[1:]:
            continue
        archs = [f"{p[:-1]}.{p[-1]}" for p in parts[1:] if p.isdigit()]
        try:
            if d.name != _build_dir(archs).name:
                continue  # built from other sources / torch / CUDA
        except ValueError:
            continue
        lib = _find_library(d)
        if lib is not None:
            return lib
    return None


# ---------------------------------------------------------------------------- checks
def environment_problem() -> str | None:
    """Why this machine cannot build or run the extension (cheap checks), or None."""
    if torch.version.cuda is None:
        return "torch was built without CUDA (torch.version.cuda is None)"
    if not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"the CUDA kernel needs an sm_80+ GPU; {torch.cuda.get_device_name()} is sm_{major}{minor}"
    missing = [p.name for p in sources() + headers() if not p.exists()]
    if not (CSRC / "binding.cpp").exists() or not list(CSRC.glob("*.cu")) or missing:
        return f"CUDA kernel sources are missing from the installation ({CSRC})"
    return None


def _ensure_ninja_on_path() -> None:
    """Put the ninja of this Python's environment on PATH (a venv that is not activated)."""
    if shutil.which("ninja"):
        return
    cand = Path(sys.executable).parent / "ninja"
    if cand.exists():
        os.environ["PATH"] = str(cand.parent) + os.pathsep + os.environ.get("PATH", "")


def toolchain_problem() -> str | None:
    """Why the extension cannot be compiled here (nvcc, ninja, C++ compiler), or None."""
    from torch.utils import cpp_extension

    _ensure_ninja_on_path()
    if nvcc_path() is None:
        return "nvcc not found (install the CUDA toolkit or set CUDA_HOME)"
    if not cpp_extension.is_ninja_available():
        return "ninja not found (pip install ninja)"
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx}) found"
    return None


def availability_reason() -> str | None:
    """Cheap: None if the extension is loaded or could be built/loaded here, else why not.

    Does not build. A build that failed earlier in this process is reported here.
    """
    with _lock:
        if _state["loaded"]:
            return None
        if _state["tried"] and _state["error"]:
            return _state["error"]
    reason = environment_problem()
    if reason:
        return reason
    arch = _local_arch()
    if arch and _cached_build_for(arch) is not None:
        return None
    if os.environ.get("SAMSPARSE_CUDA_BUILD", "1") == "0":
        return "no cached build of the CUDA extension and SAMSPARSE_CUDA_BUILD=0 forbids compiling one"
    return toolchain_problem()


# ---------------------------------------------------------------------------- build + load
def _first_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for pat in (r"\berror\b[: ]", r"\berror\b", r"(?i)fatal", r"(?i)failed"):
        for ln in lines:
            if re.search(pat, ln) and not ln.startswith("ninja: build stopped"):
                return ln[:400]
    return lines[-1][:400] if lines else "unknown error"


def _compile(archs: list[str], verbose: bool) -> Path:
    """Compile into the cache (cpp_extension + ninja) and load; returns the library path."""
    from torch.utils import cpp_extension

    build_dir = _build_dir(archs)
    build_dir.mkdir(parents=True, exist_ok=True)
    log_path = build_dir / "build.log"
    old_arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(compile_archs(archs))
    old_home = cpp_extension.CUDA_HOME
    home = cuda_home()
    if home:
        cpp_extension.CUDA_HOME = home  # read by cpp_extension when it builds include/library paths
    t0 = time.perf_counter()
    try:
        path = cpp_extension.load(
            name=_lib_name(build_dir),
            sources=[str(s) for s in sources()],
            extra_cflags=["-O3", "-DNDEBUG"],
            extra_cuda_cflags=list(NVCC_FLAGS),
            extra_include_paths=[str(CSRC)],
            build_directory=str(build_dir),
            verbose=verbose,
            is_python_module=False,
        )
    except Exception as exc:  # noqa: BLE001 - report any build/load failure as a reason
        text = f"{type(exc).__name__}: {exc}"
        try:
            log_path.write_text(text)
        except OSError:
            pass
        raise BuildError(f"build failed: {_first_error_line(text)}; see log at {log_path}") from exc
    finally:
        cpp_extension.CUDA_HOME = old_home
        if old_arch is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = old_arch
    seconds = time.perf_counter() - t0
    try:
        log_path.write_text(f"built in {seconds:.1f} s for archs {';'.join(archs)}\n")
    except OSError:
        pass
    _state["seconds"] = seconds
    _state["built"] = True
    return Path(path) if isinstance(path, (str, os.PathLike)) else (_find_library(build_dir) or build_dir)


def _load_library(path: Path) -> None:
    torch.ops.load_library(str(path))


def ensure_loaded(verbose: bool = False) -> str | None:
    """Load the extension, building it first if needed (at most one attempt per process).

    Returns None when ``torch.ops.samsparse_cuda`` is ready, else the reason.
    """
    with _lock:
        if _state["loaded"]:
            return None
        if _state["tried"]:
            return _state["error"]
        _state["tried"] = True
        reason = environment_problem()
        if reason is None:
            try:
                arch = _local_arch()
                env_archs = os.environ.get("SAMSPARSE_CUDA_ARCH")
                cached = None if env_archs else _cached_build_for(arch)
                if cached is not None:
                    _load_library(cached)
                    _state["path"] = str(cached)
                else:
                    if os.environ.get("SAMSPARSE_CUDA_BUILD", "1") == "0":
                        raise BuildError(
                            "no cached build of the CUDA extension and SAMSPARSE_CUDA_BUILD=0 forbids compiling one"
                        )
                    problem = toolchain_problem()
                    if problem:
                        raise BuildError(problem)
                    archs = _norm_archs(env_archs or arch)
                    log.warning(
                        "samsparse: compiling the CUDA attention extension for sm_%s (first use; cached under %s)",
                        "/".join(a.replace(".", "") for a in archs),
                        cache_root(),
                    )
                    _state["path"] = str(_compile(archs, verbose))
                _state["loaded"] = True
            except BuildError as exc:
                reason = str(exc)
            except Exception as exc:  # noqa: BLE001
                reason = f"loading the CUDA extension failed: {type(exc).__name__}: {exc}"
        _state["error"] = reason
        return reason


def load_reason() -> str | None:
    """Alias of :func:`ensure_loaded` (the reason string, None when loaded)."""
    return ensure_loaded()


def require() -> None:
    """Load the extension or raise RuntimeError with the reason."""
    reason = ensure_loaded()
    if reason is not None:
        raise RuntimeError(f"samsparse CUDA backend unavailable: {reason}")


def library_path() -> str | None:
    """Path of the loaded library (None if not loaded)."""
    return _state["path"] if _state["loaded"] else None


def build_info() -> dict:
    """State of the extension in this process (for diagnostics)."""
    with _lock:
        return dict(_state)


def build_extension(verbose: bool = True, archs: str | None = None) -> Path:
    """Compile the extension ahead of time into the cache and load it; returns the library path.

    Args:
        verbose: show the compiler commands and output.
        archs: architecture list (``"8.0;9.0"``); default ``$SAMSPARSE_CUDA_ARCH`` or
            ``8.0;9.0`` plus the local GPU's.

    Raises:
        BuildError: with a readable reason (no nvcc, compile error + log path, ...).
    """
    if torch.version.cuda is None:
        raise BuildError("torch was built without CUDA (torch.version.cuda is None)")
    problem = toolchain_problem()
    if problem:
        raise BuildError(problem)
    spec = archs or os.environ.get("SAMSPARSE_CUDA_ARCH") or DEFAULT_AOT_ARCHS
    arch_list = _norm_archs(spec)
    local = _local_arch()
    if archs is None and not os.environ.get("SAMSPARSE_CUDA_ARCH") and local and local not in arch_list:
        arch_list.append(local)
    with _lock:
        if _state["loaded"]:
            raise BuildError(
                f"the extension is already loaded in this process ({_state['path']}); "
                "run the ahead-of-time build in a fresh process"
            )
        path = _compile(arch_list, verbose)
        _state.update(tried=True, loaded=True, error=None, path=str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m samsparse.backends.cuda.build",
        description="Compile the samsparse CUDA attention extension into the cache ($SAMSPARSE_HOME/ext).",
    )
    parser.add_argument("--arch", default=None, help="CUDA architectures, e.g. '9.0' or '8.0;9.0' (default 8.0;9.0 + local)")
    parser.add_argument("--quiet", action="store_true", help="do not echo the compiler output")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        path = build_extension(verbose=not args.quiet, archs=args.arch)
    except (BuildError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"built {path} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
