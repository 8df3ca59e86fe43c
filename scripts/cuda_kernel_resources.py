"""Registers, spills and key-loop length of the CUDA backend's kernels, compiled offline (no GPU).

Compiles kernel translation units of ``samsparse/backends/cuda/csrc`` with nvcc (``-Xptxas -v``)
and reads each kernel's registers and spill bytes; with ``cuobjdump`` (and ``nvdisasm``) on the
PATH also its SASS length and the length of its longest loop (the key loop), the numbers that
decide occupancy and issue-bound speed. ``--against REV`` compiles that git revision's sources
too and prints both side by side, to screen a kernel edit before spending GPU time on it::

    python scripts/cuda_kernel_resources.py                       # bf16 d=64 and fp16 d=80, sm_90a and sm_80
    python scripts/cuda_kernel_resources.py --units fwd_bf16_hd80 --archs 90a --against HEAD
    python scripts/cuda_kernel_resources.py --filter sm90         # the Hopper (wgmma) kernels only
    python scripts/cuda_kernel_resources.py --filter sm90 --pipeline  # + each key loop's wgmma schedule

``--pipeline`` prints, per kernel, its key loop as the sequence ptxas scheduled: ``HGMMAxN`` a run of N
wgmma instructions, ``wait<=N`` a ``WARPGROUP.DEPBAR``, ``bar`` a CTA barrier, and between them the number
of other instructions (the work that overlaps the products in flight), plus the loop's shared-memory loads
and local-memory (spill) accesses. A wait right after its products (gap 0) means ptxas serialized them.

cuobjdump / nvdisasm ship with the CUDA toolkit (or ``pip install nvidia-cuda-cuobjdump
nvidia-cuda-nvdisasm``, binaries under ``nvidia/cu13/bin``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from samsparse.backends.cuda.build import standalone_nvcc_flags  # noqa: E402

CSRC = ROOT / "samsparse" / "backends" / "cuda" / "csrc"
NVCC_FLAGS = [*standalone_nvcc_flags(), "-Xptxas=-v"]
_BRANCH = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?BRA\s+[^;]*?0x([0-9a-f]+)")
_INSTR = re.compile(r"/\*[0-9a-f]{4,}\*/\s+\S")


def short_name(mangled: str) -> str:
    """attn_fwd_kernel<bf16, 64, 64> style name of a mangled kernel symbol."""
    kernel = "attn_fwd_sm90_kernel" if "sm90" in mangled else "attn_fwd_kernel"
    dtype = "bf16" if "bfloat16" in mangled else "fp16" if "half" in mangled else "?"
    args = [i or b for i, b in re.findall(r"Li(\d+)E|Lb([01])E", mangled)]  # int and bool template arguments
    return f"{kernel}<{dtype}, {', '.join(args)}>"


def ptxas_resources(stderr: str) -> dict[str, tuple[int, int]]:
    """{mangled kernel: (registers, spill store bytes)} from ``-Xptxas -v`` output."""
    out = {}
    for block in stderr.split("Compiling entry function")[1:]:
        name = block.split("'")[1]
        regs = re.search(r"Used (\d+) registers", block)
        spill = re.search(r"(\d+) bytes spill stores", block)
        out[name] = (int(regs.group(1)) if regs else -1, int(spill.group(1)) if spill else -1)
    return out


def sass_bodies(obj: Path) -> dict[str, str]:
    """{mangled kernel: its SASS text} of an object file; empty without cuobjdump."""
    tool = shutil.which("cuobjdump")
    if tool is None:
        return {}
    proc = subprocess.run([tool, "-sass", str(obj)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {}
    parts = re.split(r"\n\s*Function : (\S+)\n", proc.stdout)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def longest_loop(sass_body: str) -> tuple[int, int] | None:
    """(first, last) instruction address of the longest backward branch's span (the key loop), or None."""
    best = None
    for m in _BRANCH.finditer(sass_body):
        src, dst = int(m.group(1), 16), int(m.group(2), 16)
        if dst < src and (best is None or src - dst > best[1] - best[0]):
            best = (dst, src)
    return best


def sass_lengths(bodies: dict[str, str]) -> dict[str, tuple[int, int]]:
    """{mangled kernel: (instructions, longest backward-branch span)} from ``sass_bodies``."""
    out = {}
    for name, body in bodies.items():
        span = longest_loop(body)
        out[name] = (len(_INSTR.findall(body)), (span[1] - span[0]) // 16 if span else 0)
    return out


_OP = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)(\.[A-Z0-9_.]+)?([^;]*);")


def loop_schedule(sass_body: str) -> dict:
    """The longest loop of one kernel's SASS: {"schedule": "...", "lds": n, "local": n, "length": n}.

    ``schedule`` lists runs of wgmma (``HGMMAxN``), their waits (``wait<=N``), barriers (``bar``) and the
    number of other instructions between them, in issue order."""
    ops = [(int(m.group(1), 16), m.group(2), (m.group(3) or ""), m.group(4)) for m in _OP.finditer(sass_body)]
    best = longest_loop(sass_body)
    if best is None:
        return {"schedule": "", "lds": 0, "local": 0, "length": 0}
    loop = [o for o in ops if best[0] <= o[0] <= best[1]]
    items: list[str] = []
    other = 0
    hgmma = 0

    def flush_other():
        nonlocal other
        if other:
            items.append(str(other))
            other = 0

    for _, op, suffix, rest in loop:
        if op == "HGMMA":
            if not hgmma:
                flush_other()
            hgmma += 1
            continue
        if hgmma:
            items.append(f"HGMMAx{hgmma}")
            hgmma = 0
        if op == "WARPGROUP" and suffix.startswith(".DEPBAR"):
            flush_other()
            n = re.search(r"0x([0-9a-f]+)", rest)
            items.append(f"wait<={int(n.group(1), 16) if n else '?'}")
        elif op == "BAR" and suffix.startswith(".SYNC"):
            flush_other()
            items.append("bar")
        elif op == "WARPGROUP" and suffix.startswith(".ARRIVE"):
            continue  # the fence before a run of products
        else:
            other += 1
    if hgmma:
        items.append(f"HGMMAx{hgmma}")
    flush_other()
    return {
        "schedule": " ".join(items),
        "lds": sum(1 for o in loop if o[1] == "LDS"),
        "local": sum(1 for o in loop if o[1] in ("LDL", "STL")),
        "length": len(loop),
    }


def compile_unit(csrc: Path, unit: str, arch: str, work: Path, tag: str = "new") -> dict[str, dict]:
    """Compile ``unit``.cu of ``csrc`` for sm_<arch> into ``work``; {mangled kernel: resources}."""
    obj = work / f"{tag}_{unit}_{arch}.o"
    cmd = ["nvcc", *NVCC_FLAGS, f"-gencode=arch=compute_{arch},code=sm_{arch}", "-I", str(csrc), "-c",
           str(csrc / f"{unit}.cu"), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed for {unit} sm_{arch}:\n{proc.stderr[-3000:]}")
    res = ptxas_resources(proc.stderr)
    bodies = sass_bodies(obj)
    sass = sass_lengths(bodies)
    sched = {name: loop_schedule(body) for name, body in bodies.items()} if tag == "new" else {}
    return {name: {"regs": r, "spill": sp, "sass": sass.get(name, (None, None))[0], "loop": sass.get(name, (None, None))[1],
                   "pipeline": sched.get(name)}
            for name, (r, sp) in res.items()}


def sources_at(rev: str, work: Path) -> Path:
    """The csrc folder of git revision ``rev``, extracted under ``work``."""
    dest = work / "rev"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "samsparse/backends/cuda/csrc"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "samsparse" / "backends" / "cuda" / "csrc"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", default="fwd_bf16_hd64,fwd_fp16_hd80", help="translation units (no .cu)")
    parser.add_argument("--archs", default="90a,80", help="compute architectures, e.g. 90a,80")
    parser.add_argument("--filter", default="", help="only kernels whose name contains this")
    parser.add_argument("--against", default=None, help="git revision to compare with")
    parser.add_argument("--pipeline", action="store_true", help="also print each key loop's wgmma schedule")
    args = parser.parse_args(argv)
    if shutil.which("nvcc") is None:
        print("error: nvcc not found on the PATH", file=sys.stderr)
        return 2
    if shutil.which("cuobjdump") is None:
        print("note: cuobjdump not on the PATH: registers and spills only", file=sys.stderr)
    units = [u.strip().removesuffix(".cu") for u in args.units.split(",") if u.strip()]
    archs = [a.strip().replace("sm_", "") for a in args.archs.split(",") if a.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        old_src = sources_at(args.against, work) if args.against else None
        head = f"{'arch':<5} {'kernel':<38} {'regs':>5} {'spill':>5} {'loop':>5} {'sass':>6}"
        print(head + (f"   | {args.against}: regs spill loop  sass" if old_src else ""))
        for unit in units:
            for arch in archs:
                new = compile_unit(CSRC, unit, arch, work)
                old = compile_unit(old_src, unit, arch, work, tag="old") if old_src else {}
                for name in sorted(new, key=short_name):
                    if args.filter and args.filter not in name and args.filter not in short_name(name):
                        continue
                    r = new[name]
                    line = f"{arch:<5} {short_name(name):<38} {r['regs']:>5} {r['spill']:>5} {r['loop'] or '-':>5} {r['sass'] or '-':>6}"
                    if old_src:
                        # a kernel that gained a trailing false template argument is the same kernel
                        o = old.get(name) or old.get(name.replace("Lb0EEEvNS", "EEvNS", 1))
                        line += ("   | (new kernel)" if o is None else
                                 f"   | {o['regs']:>5} {o['spill']:>5} {o['loop'] or '-':>4} {o['sass'] or '-':>5}")
                    print(line)
                    if args.pipeline and r.get("pipeline"):
                        pl = r["pipeline"]
                        print(f"      loop: {pl['schedule']}  (LDS {pl['lds']}, local {pl['local']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
