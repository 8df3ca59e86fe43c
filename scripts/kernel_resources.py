#!/usr/bin/env python3
"""Registers, spills and wgmma serialization of SAM's attention kernels, compiled offline (no GPU).

    python scripts/kernel_resources.py [--arch 90] [--kinds dense,window] [--config 128/64/4/3]
                                       [--json out.json] [--sass-dir DIR] [--against REV]

For SAM's attention shapes (vit_b H=12 d=64 and vit_h H=16 d=80, bf16): the windowed blocks (read
in place), and the global blocks dense, with a 25% hierarchical mask of 1x64 tiles and of 8x16
tiles. Each launch a call makes (the rel-pos terms kernel, the attention kernel, the fixed-offset
pass's redo launch) is compiled by the installed Triton for sm_<arch> the way its launcher would
(``samsparse.backends.triton.offline``), and ptxas' verdict is printed: registers, spill bytes,
stack, C7515 (every wgmma waits for the previous one), SASS instruction counts of the whole kernel
and of its key loop (the cost of one step). Use it to screen a
kernel edit before spending device time: ``--against HEAD`` compiles the committed kernels too and
prints registers, spills and loop length of both. For the
GPU machine's numbers, run with its Triton version first on the path, e.g.
``pip install --target /tmp/t36 triton==3.6.0 && PYTHONPATH=/tmp/t36 python scripts/kernel_resources.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile the real kernels

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# --against runs this script again on another revision's samsparse, extracted here
sys.path.insert(0, os.environ.get("KERNEL_RESOURCES_SRC") or str(ROOT))

from samsparse.backends.triton import offline, ops  # noqa: E402
from samsparse.backends.triton.configs import TileConfig  # noqa: E402
from samsparse.backends.triton.windows import window_attention  # noqa: E402
from samsparse.masks import BlockMask  # noqa: E402
from samsparse.masks.hierarchical import hierarchical  # noqa: E402
from samsparse.relpos import RelPos  # noqa: E402

# tile configs per kind and head dim: the shipped / autotuned choices and their nearest rivals
CONFIGS = {
    "window": {64: [(64, 32, 4, 3), (128, 32, 8, 3)], 80: [(64, 32, 4, 3), (128, 32, 8, 3)]},
    "dense": {64: [(128, 64, 4, 3), (64, 64, 4, 3)], 80: [(128, 64, 4, 3), (64, 64, 4, 3)]},
    "sparse-1x64": {64: [(64, 64, 4, 3), (128, 64, 4, 3)], 80: [(64, 64, 4, 3)]},
    "sparse-8x16": {64: [(128, 64, 8, 2), (128, 128, 8, 3)], 80: [(128, 64, 4, 3), (128, 128, 8, 2)]},
    # bench_attention.py's sparse rows: sequence layout, 128-token blocks, 25% of them per query block
    "sparse-seq128": {64: [(128, 64, 4, 3), (64, 64, 4, 3)], 80: [(128, 64, 4, 3), (64, 64, 4, 3)]},
}
MODELS = {"vit_b": (12, 64), "vit_h": (16, 80)}
# per-step work of the key loop: tensor-core products, the softmax's fp32 / MUFU work, spills
LOOP_OPS = ("HGMMA", "FFMA", "FMUL", "FADD", "FMNMX", "MUFU", "F2FP", "LDL", "STL")


def launches_of(kind: str, heads: int, d: int, batch: int, cfg: TileConfig, arch: int = 90) -> list[offline.Launch]:
    """The launches of one call of ``kind`` planned for sm_<arch> (CPU tensors laid out as SAM's qkv
    projection gives them)."""
    qkv = torch.empty(batch, 4096, 3, heads, d, dtype=torch.bfloat16)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    if kind == "window":
        fill = torch.zeros(2, heads, d, dtype=torch.bfloat16)
        tables = torch.zeros(2, 27, d, dtype=torch.bfloat16)
        rp = RelPos.from_tables(tables[0], tables[1], (14, 14))
        return offline.record_launches(
            lambda: window_attention(q, k, v, fill[0], fill[1], rp, None, (64, 64), 14, config=cfg), arch
        )
    tables = torch.zeros(2, 127, d, dtype=torch.bfloat16)
    rp = RelPos.from_tables(tables[0], tables[1], (64, 64))
    mask = None
    if kind == "sparse-seq128":
        blocks = torch.rand(1, heads, 32, 32, generator=torch.Generator().manual_seed(0)) < 0.25
        mask = BlockMask(blocks | torch.eye(32, dtype=torch.bool), 128, 4096)
    elif kind.startswith("sparse-"):
        th, tw = (int(x) for x in kind.split("-")[1].split("x"))
        mask = hierarchical((64, 64), (th, tw), heads, 0.25)
    return offline.record_launches(lambda: ops.attention(q, k, v, mask, rp, None, config=cfg), arch)


def launch_name(launch: offline.Launch) -> str:
    if launch.kernel == "_relpos_terms":
        return "terms"
    cx = launch.constexprs
    return "fixed-offset" if cx.get("FIXED_M") else "redo" if cx.get("REDO") else "attention"


def parse_config(text: str) -> tuple[int, int, int, int]:
    parts = text.replace("x", "/").split("/")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"--config wants BLOCK_M/BLOCK_N/warps/stages, e.g. 128/64/4/3, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100/H200, 80: A100)")
    ap.add_argument("--models", default="vit_b,vit_h", help="comma list of vit_b, vit_h")
    ap.add_argument("--kinds", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    ap.add_argument("--config", type=parse_config, action="append", help="tile config(s) instead of the table's")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--maxnreg", type=int, help="compile every launch with this register cap (Triton's maxnreg): "
                    "what a cap costs in spills and what it buys in CTAs per SM")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--sass-dir", type=Path, help="write each kernel's SASS here")
    ap.add_argument("--against", metavar="REV",
                    help="also compile git revision REV's kernels (same classes) and print the differences")
    args = ap.parse_args()
    kinds = [x for x in args.kinds.split(",") if x]
    models = [x for x in args.models.split(",") if x]
    unknown = [x for x in kinds if x not in CONFIGS] + [x for x in models if x not in MODELS]
    if unknown:
        ap.error(f"unknown kind or model {unknown}; kinds: {', '.join(CONFIGS)}; models: {', '.join(MODELS)}")

    import triton

    print(f"triton {triton.__version__}, sm_{args.arch}, bf16, B={args.batch} (offline: no kernel runs)", flush=True)
    if args.sass_dir:
        args.sass_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in models:
        heads, d = MODELS[model]
        for kind in kinds:
            for cfg in args.config or CONFIGS[kind][d]:
                tc = TileConfig(*cfg)
                name = f"M{tc.block_m}/N{tc.block_n}/w{tc.num_warps}/s{tc.num_stages}"
                for launch in launches_of(kind, heads, d, args.batch, tc, args.arch):
                    if args.maxnreg:
                        launch = dataclasses.replace(launch, constexprs={**launch.constexprs, "maxnreg": args.maxnreg})
                    which = launch_name(launch)
                    if which == "terms" and kind == "window":
                        continue
                    rep = offline.compile_launch(launch, args.arch)
                    row = {"model": model, "kind": kind, "config": name, "kernel": which, "registers": rep.registers,
                           "spill_store_bytes": rep.spill_store_bytes, "spill_load_bytes": rep.spill_load_bytes,
                           "stack_bytes": rep.stack_bytes, "wgmma_serialized": rep.wgmma_serialized,
                           "instructions": rep.instructions, "loop_instructions": rep.loop_instructions,
                           "shared_bytes": rep.shared_bytes, "ctas_per_sm": rep.ctas_per_sm, "cta_limit": rep.cta_limit,
                           **{f"loop_{op}": rep.loop_opcodes.get(op, 0) for op in LOOP_OPS}}
                    rows.append(row)
                    print(f"{model} {kind:11s} {name:15s} {which:12s} regs {rep.registers:3d}  spills "
                          f"{rep.spill_store_bytes}/{rep.spill_load_bytes} B (stack {rep.stack_bytes})  "
                          f"{rep.ctas_per_sm} CTAs/SM ({rep.cta_limit}, {rep.shared_bytes // 1024} KB smem)  "
                          f"wgmma {'SERIALIZED' if rep.wgmma_serialized else 'async':10s}  {rep.instructions} SASS, "
                          f"loop {rep.loop_instructions}: "
                          + " ".join(f"{op} {row[f'loop_{op}']}" for op in LOOP_OPS if row[f"loop_{op}"]),
                          flush=True)
                    if args.sass_dir:
                        (args.sass_dir / f"{model}_{kind}_{name.replace('/', '-')}_{which}.sass").write_text(rep.sass)
    if args.json:
        args.json.write_text(json.dumps({"triton": triton.__version__, "arch": args.arch, "rows": rows}, indent=1))
    if args.against:
        return compare_against(args, rows)
    return 0


def compare_against(args: argparse.Namespace, rows: list[dict]) -> int:
    """Compile revision ``args.against``'s kernels for the same classes (this script again, on that
    revision's extracted samsparse) and print registers / spills / loop instructions side by side."""
    import shutil
    import subprocess
    import tempfile

    rev = args.against
    argv = ["--arch", str(args.arch), "--models", args.models, "--kinds", args.kinds, "--batch", str(args.batch)]
    for cfg in args.config or []:
        argv += ["--config", "/".join(str(x) for x in cfg)]
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "samsparse"], capture_output=True)
        if archive.returncode != 0:
            print(f"--against: git archive {rev} failed: {archive.stderr.decode().strip()}", file=sys.stderr)
            return 2
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        # this tool's own module, also for revisions from before it existed
        shutil.copy(ROOT / "samsparse" / "backends" / "triton" / "offline.py",
                    Path(tmp) / "samsparse" / "backends" / "triton" / "offline.py")
        out = Path(tmp) / "rows.json"
        env = dict(os.environ, KERNEL_RESOURCES_SRC=tmp)
        res = subprocess.run([sys.executable, __file__, *argv, "--json", str(out)], env=env,
                             capture_output=True, text=True)
        if res.returncode != 0:
            print(f"--against {rev}: compiling that revision failed:\n{res.stderr[-2000:]}", file=sys.stderr)
            return 2
        old = {(r["model"], r["kind"], r["config"], r["kernel"]): r for r in json.loads(out.read_text())["rows"]}
    print(f"\n{rev} -> working tree (registers, spilled bytes stored, loop instructions):")
    for r in rows:
        o = old.get((r["model"], r["kind"], r["config"], r["kernel"]))
        if o is None:
            print(f"{r['model']} {r['kind']:11s} {r['config']:15s} {r['kernel']:12s} (new in the working tree)")
            continue
        keys = ("registers", "spill_store_bytes", "loop_instructions", "instructions", "ctas_per_sm")
        same = all(o.get(k) == r[k] for k in keys)
        ctas = f"{o.get('ctas_per_sm', '?')}->{r['ctas_per_sm']}"
        print(f"{r['model']} {r['kind']:11s} {r['config']:15s} {r['kernel']:12s} regs {o['registers']}->{r['registers']}  "
              f"CTAs/SM {ctas}{'  <- OCCUPANCY' if o.get('ctas_per_sm', r['ctas_per_sm']) != r['ctas_per_sm'] else ''}  "
              f"spills {o['spill_store_bytes']}->{r['spill_store_bytes']} B  loop {o['loop_instructions']}->"
              f"{r['loop_instructions']}  total {o['instructions']}->{r['instructions']}{'  (same)' if same else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
