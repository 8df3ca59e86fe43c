"""Temporary: which small-grid one-hot calls fault on the GPU (each case in a fresh process)."""
import os, shutil, subprocess, sys
from pathlib import Path
CHILD = r'''
import sys, torch
sys.path.insert(0, ".")
from samsparse.backends.triton import ops
from samsparse.backends.triton.configs import TileConfig
from samsparse.relpos import RelPos
from samsparse.backends.reference import reference_attention
gh, gw, d = (int(x) for x in sys.argv[1].split(","))
cfg = TileConfig(*[int(x) for x in sys.argv[2].split(",")])
mode = sys.argv[3]
torch.manual_seed(0)
n = gh * gw
qkv = torch.randn(1, n, 3, 2, d, device="cuda", dtype=torch.bfloat16)
q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
th = torch.randn(2 * gh - 1, d, device="cuda", dtype=torch.bfloat16)
tw = torch.randn(2 * gw - 1, d, device="cuda", dtype=torch.bfloat16)
rp = RelPos.from_tables(th, tw, (gh, gw))
if mode == "terms":
    rh, rw = ops.relpos_terms(q, rp.rh, rp.rw, (gh, gw), (gh, gw))
    rp = RelPos((gh, gw), (gh, gw), rel_h=rh, rel_w=rw)
elif mode == "contig":
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
out = ops.attention(q, k, v, None, rp, d ** -0.5, config=cfg)[0]
torch.cuda.synchronize()
ref = reference_attention(q.float(), k.float(), v.float(), None, RelPos.from_tables(th.float(), tw.float(), (gh, gw)), d ** -0.5)
geo = list(ops._GEOMETRIES.values())[-1]
plan = list(ops._PLANS.values())[-1].constexprs
print("ok err %.2e" % float((out.float() - ref).abs().max() / ref.abs().max()),
      {k: plan[k] for k in ("BLOCK_M", "BLOCK_N", "EVEN_Q", "EVEN_K", "REL_DOT", "REL_TAB", "TP", "RHP", "RWP", "D2", "num_warps")})
'''
CASES = [
    ("8,8,80", "64,64,4,3", "tables"), ("8,8,80", "64,64,4,3", "terms"), ("8,8,80", "64,64,4,3", "contig"),
    ("8,8,80", "64,32,4,3", "tables"), ("8,8,80", "64,128,4,2", "tables"), ("8,8,64", "64,64,4,3", "tables"),
    ("4,12,80", "64,64,4,3", "tables"), ("16,16,80", "64,64,4,3", "tables"), ("10,10,80", "64,64,4,3", "tables"),
    ("8,8,80", "32,64,4,3", "tables"), ("8,16,80", "64,64,4,3", "tables"), ("14,14,80", "64,64,4,3", "tables"),
    ("8,8,64", "64,64,8,2", "tables"),
]
san = shutil.which("compute-sanitizer") or next((str(p) for p in (Path("/usr/local/cuda/bin/compute-sanitizer"),) if p.exists()), None)
for grid, cfg, mode in CASES:
    r = subprocess.run([sys.executable, "-c", CHILD, grid, cfg, mode], capture_output=True, text=True, timeout=120)
    last = (r.stdout.strip().splitlines() or ["?"])[-1]
    err = [l for l in r.stderr.splitlines() if "rror" in l][-1:]
    print(f"grid {grid:9s} cfg {cfg:10s} {mode:6s} rc={r.returncode} {last} {err}", flush=True)
    if r.returncode != 0 and san and grid == "8,8,80" and mode == "tables":
        s = subprocess.run([san, "--tool", "memcheck", "--print-limit", "4", sys.executable, "-c", CHILD, grid, cfg, mode],
                           capture_output=True, text=True, timeout=240)
        print("\n".join(s.stdout.splitlines()[:60]), flush=True)
        san = None  # once
