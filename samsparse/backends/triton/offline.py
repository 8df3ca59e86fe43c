"""The Triton kernels compiled for a GPU architecture without that GPU: registers, spills, SASS.

Device time is the scarce resource of kernel work, and a kernel edit that looks neutral can push a
255-register kernel into spills (the eighth run measured one such edit 20% slower on an H200; compiled
offline with the same Triton, it showed 32 bytes of stack and 7 spill loads in place of 8 and 1).
This module records the launches a call would make (through the ops launchers, nothing runs),
compiles each one the way Triton's launcher would for the target architecture (same specialization
of the arguments: dtypes, 16-byte alignment, integer values; same options), and reports what ptxas
made of it. No GPU and no CUDA driver are needed: Triton ships ptxas and cuobjdump.

The numbers are those of the installed Triton. To predict a GPU machine's kernels, install its
Triton version next to this one (``pip install --target DIR triton==3.6.0``, then ``PYTHONPATH=DIR``).
``scripts/kernel_resources.py`` runs SAM's shape classes through this.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

__all__ = ["Launch", "KernelReport", "record_launches", "compile_launch"]


@dataclass
class Launch:
    """One kernel launch as the ops launchers see it: positional args, then constexprs by name."""

    kernel: str  # attribute of samsparse.backends.triton.kernel
    grid: tuple
    args: tuple  # tensors, floats, ints
    constexprs: dict


@dataclass
class KernelReport:
    """What ptxas made of one launch's kernel for ``arch``."""

    kernel: str
    arch: int
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    stack_bytes: int
    wgmma_serialized: bool  # ptxas C7515: every wgmma waits for the previous one
    instructions: int  # SASS instructions of the whole kernel
    loop_instructions: int  # SASS instructions of the longest loop (the key-step loop: the cost per step)
    opcodes: dict = field(repr=False)  # SASS opcode (without modifiers) -> count, whole kernel
    loop_opcodes: dict = field(repr=False)  # the same for the longest loop
    sass: str = field(repr=False, default="")
    shared_bytes: int = 0  # shared memory per CTA (Triton's metadata)
    num_warps: int = 4
    ctas_per_sm: int = 0  # resident CTAs per SM that registers, shared memory and warps allow (Hopper limits)
    cta_limit: str = ""  # what sets ctas_per_sm: "registers", "shared memory" or "warps"


# Hopper (sm_90) per-SM limits; registers are allocated per warp in units of 256 (8 per thread)
SM90_REGISTERS = 65536
SM90_SHARED_BYTES = 233472  # 228 KB, of which each CTA's block also reserves 1 KB
SM90_CTA_RESERVED_SHARED = 1024
SM90_WARPS = 64
SM90_CTAS = 32


def ctas_per_sm(registers: int, num_warps: int, shared_bytes: int) -> tuple[int, str]:
    """Resident CTAs per Hopper SM for a kernel of ``registers`` per thread, ``num_warps`` warps and
    ``shared_bytes`` of shared memory per CTA, and which limit sets it. One register more can cost a CTA:
    4-warp CTAs fit 3 per SM up to 168 registers and 2 from 169 (the occupancy cliff behind the twelfth
    session's slower self-offset variant of the pass)."""
    per_warp = -(-max(registers, 1) // 8) * 8 * 32
    by_regs = (SM90_REGISTERS // per_warp) // num_warps
    by_shared = SM90_SHARED_BYTES // (shared_bytes + SM90_CTA_RESERVED_SHARED)
    by_warps = SM90_WARPS // num_warps
    limits = {"registers": by_regs, "shared memory": by_shared, "warps": by_warps, "CTA slots": SM90_CTAS}
    which = min(limits, key=limits.get)
    return limits[which], which


class _Recorder:
    def __init__(self, name: str, launches: list) -> None:
        self.name = name
        self.cache: dict = {}
        self._launches = launches

    def __call__(self, grid, tensors, floats, ints, constexprs, plan_key, device) -> None:
        self._launches.append(Launch(self.name, tuple(grid), (*tensors, *floats, *ints), dict(constexprs)))


@contextmanager
def _recording(arch: int) -> Iterator[list]:
    from . import ops

    launches: list[Launch] = []
    # (getattr: kernel_resources.py --against runs this module on older revisions, without _device_arch)
    saved = ops._ATTN_LAUNCHER, ops._TERMS_LAUNCHER, getattr(ops, "_device_arch", None)
    ops._ATTN_LAUNCHER = _Recorder("_attn_fwd", launches)
    ops._TERMS_LAUNCHER = _Recorder("_relpos_terms", launches)
    if saved[2] is not None:
        ops._device_arch = lambda device: arch  # plan for the target GPU (plans are keyed by arch)
    try:
        yield launches
    finally:
        ops._ATTN_LAUNCHER, ops._TERMS_LAUNCHER = saved[:2]
        if saved[2] is not None:
            ops._device_arch = saved[2]


def record_launches(call: Callable[[], object], arch: int = 90) -> list[Launch]:
    """The launches ``call()`` makes through ``samsparse.backends.triton.ops`` (none of them runs), planned
    as for a GPU of compute capability ``arch`` (x10; compile them for the same one).

    ``call`` may use CPU tensors (their strides and 16-byte alignment stand for the GPU's) and should
    force a tile config (``config=TileConfig(...)``): without a GPU nothing is autotuned.
    """
    from . import kernel

    if kernel.INTERPRET:
        raise RuntimeError("the kernels were loaded with TRITON_INTERPRET=1: unset it to compile them offline")
    with _recording(arch) as launches:
        call()
    return launches


def _triton_bin(tool: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)
    if not os.path.exists(path):
        raise RuntimeError(f"Triton's {tool} is missing ({path}): a Triton build with the NVIDIA backend is needed")
    return path


def _compile(launch: Launch, arch: int):
    """Triton's compile of ``launch`` for sm_<arch>, through the launcher's own binder (Triton 3.6-3.8)."""
    import triton

    from . import kernel

    fn = getattr(kernel, launch.kernel)
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.jit import create_function_from_signature

        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = binder(*launch.args, **launch.constexprs)
        options, signature, constexprs, attrs = fn._pack_args(backend, launch.constexprs, bound, specialization, options)
    except (ImportError, AttributeError, TypeError) as exc:
        raise RuntimeError(
            f"offline compilation uses Triton's launcher internals (3.6-3.8); this Triton is {triton.__version__} "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def _ptxas_report(ptx: str, arch: int) -> dict:
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        res = subprocess.run([_triton_bin("ptxas"), "-v", "--gpu-name", gpu, src, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True)
    text = res.stdout + res.stderr
    if res.returncode != 0:
        raise RuntimeError(f"ptxas failed for {gpu}: {text.strip()[:400]}")

    def number(pattern: str) -> int:
        m = re.search(pattern, text)
        return int(m.group(1)) if m else 0

    return {
        "registers": number(r"Used (\d+) registers"),
        "spill_store_bytes": number(r"(\d+) bytes spill stores"),
        "spill_load_bytes": number(r"(\d+) bytes spill loads"),
        "stack_bytes": number(r"(\d+) bytes stack frame"),
        "wgmma_serialized": "C7515" in text,
    }


_INSTRUCTION = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)([^;]*);")


def _sass(cubin: bytes) -> tuple[str, dict, dict]:
    """cuobjdump's SASS, its opcode counts, and those of its longest loop (a backward branch's range)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        res = subprocess.run([_triton_bin("cuobjdump"), "-sass", path], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"cuobjdump failed: {(res.stdout + res.stderr).strip()[:400]}")
    code = []  # (address, opcode, operands)
    for line in res.stdout.splitlines():
        m = _INSTRUCTION.match(line)
        if m:
            code.append((int(m.group(1), 16), m.group(2), m.group(3)))
    loops = []
    for addr, op, rest in code:
        target = re.search(r"0x([0-9a-f]+)", rest) if op == "BRA" else None
        if target and int(target.group(1), 16) < addr:
            loops.append((int(target.group(1), 16), addr))
    start, end = max(loops, key=lambda r: r[1] - r[0]) if loops else (0, -1)
    counts = collections.Counter(op for _, op, _ in code)
    in_loop = collections.Counter(op for addr, op, _ in code if start <= addr <= end)
    return res.stdout, dict(counts), dict(in_loop)


def compile_launch(launch: Launch, arch: int = 90) -> KernelReport:
    """Compile ``launch``'s kernel for sm_<arch> (90: Hopper, with wgmma) and report its resources."""
    compiled = _compile(launch, arch)
    info = _ptxas_report(compiled.asm["ptx"], arch)
    sass, opcodes, loop_opcodes = _sass(compiled.asm["cubin"])
    shared = int(getattr(compiled.metadata, "shared", 0) or 0)
    warps = int(launch.constexprs.get("num_warps", getattr(compiled.metadata, "num_warps", 4)))
    ctas, limit = ctas_per_sm(info["registers"], warps, shared)
    return KernelReport(
        kernel=launch.kernel, arch=arch, instructions=sum(opcodes.values()), opcodes=opcodes,
        loop_instructions=sum(loop_opcodes.values()), loop_opcodes=loop_opcodes, sass=sass,
        shared_bytes=shared, num_warps=warps, ctas_per_sm=ctas, cta_limit=limit, **info,
    )
