"""The scripts in scripts/ start, explain themselves, and refuse a GPU-less machine with a message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY_SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))
SH_SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))
# scripts that only make sense on a GPU; without one they must say so (exit 2), not crash
GPU_ONLY = {
    "first_call_encoder.py", "profile_encoder.py", "profile_kernels.py", "profile_host.py", "cuda_memcheck_case.py",
    "bench_linear_act.py", "sweep_window_configs.py", "sweep_maxnreg.py", "check_wgmma_serialization.py",
    "ab_fixed_offset.py", "bench_batch_scaling.py", "bench_terms.py", "bench_step_cost.py", "ab_persistent_toy.py",
}


def _run(args, **kw):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=180, **kw)


@pytest.mark.parametrize("script", PY_SCRIPTS, ids=[p.name for p in PY_SCRIPTS])
def test_script_help(script):
    proc = _run([sys.executable, str(script), "--help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip(), "--help printed nothing"


@pytest.mark.parametrize("script", SH_SCRIPTS, ids=[p.name for p in SH_SCRIPTS])
def test_shell_script_syntax(script):
    proc = _run(["bash", "-n", str(script)])
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message shown without a GPU")
@pytest.mark.parametrize("name", sorted(GPU_ONLY))
def test_gpu_scripts_refuse_cpu_machines_cleanly(name):
    proc = _run([sys.executable, str(ROOT / "scripts" / name)])
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "needs a CUDA GPU" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_profile_encoder_groups_kernels_by_what_they_do():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import profile_encoder
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    cases = {
        "_attn_fwd": "attention (ours)",
        "_relpos_terms": "rel-pos terms",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma": "attention (SDPA)",
        "void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816fprop_optimized_bf16": "convolution",
        "nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_bias_TNN": "GEMM",
        "triton_poi_fused_gelu_view_4": "Inductor fused",
        "Memset (Device)": "other",
    }
    for name, group in cases.items():
        assert profile_encoder.group_of(name) == group, name


def test_bench_step_cost_masks_read_exactly_k_key_blocks_and_the_fit_is_least_squares():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench_step_cost
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    for rows, k in ((1, 5), (2, 3), (2, 32)):
        mask = bench_step_cost.exact_mask(4, rows, k, seed=k, device="cpu")
        assert mask.block_size == (64 * rows, 64 * rows)
        assert (mask.blocks.sum(-1) == k).all(), "every query block reads exactly k key blocks"
        assert mask.blocks.diagonal(dim1=-2, dim2=-1).all(), "the diagonal first"
    with pytest.raises(ValueError, match="k must be in"):
        bench_step_cost.exact_mask(4, 2, 33, seed=0, device="cpu")
    t0, s = bench_step_cost.fit([(1, 3.0), (2, 5.0), (4, 9.0), (8, 17.0)])
    assert abs(t0 - 1.0) < 1e-12 and abs(s - 2.0) < 1e-12
    t0, s = bench_step_cost.fit([(0, 0.0), (1, 1.0), (2, 1.0)])  # not collinear: least squares
    assert abs(s - 0.5) < 1e-12 and abs(t0 - 1 / 6) < 1e-12


def test_bench_attention_cpu_smoke_times_every_contender_of_ours(tmp_path):
    """bench_attention.py end to end on a tiny grid under the Triton interpreter: each of our rows
    (whole call, the patched block's call, terms handed in, sparse) runs and matches the reference."""
    import json
    import os

    out = tmp_path / "attention.json"
    proc = _run(
        [sys.executable, "scripts/bench_attention.py", "--device", "cpu", "--batches", "1", "--models", "b",
         "--grid", "8", "--densities", "1,0.5", "--block", "16", "--skip-flex", "--skip-eager", "--no-window",
         "--rep", "1", "--scaling-rounds", "2", "--json", str(out)],
        env=dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in json.loads(out.read_text())["rows"] if r["contender"].startswith("ours")]
    got = {(r["contender"], r["density"]) for r in rows}
    assert {("ours", 1.0), ("ours_module", 1.0), ("ours_terms", 1.0), ("ours", 0.5)} <= got, got
    for r in rows:
        assert r.get("max_rel_err", 1.0) <= 2e-2, r
    # the sparse row's p-scaling also from alternating rounds: the median of the two rounds' ratios
    sparse = next(r for r in rows if r["contender"] == "ours" and r["density"] < 1.0)
    low, high = sparse["scaling_alt_range"]
    assert 0 < low <= sparse["scaling_alt"] <= high, sparse


def test_bench_batch_scaling_cpu_smoke(tmp_path):
    """bench_batch_scaling.py end to end on a tiny grid under the Triton interpreter: per-round ratios of
    the patched block's call at B=1 and at the larger batch, and their median."""
    import json
    import os

    out = tmp_path / "scaling.json"
    proc = _run(
        [sys.executable, "scripts/bench_batch_scaling.py", "--device", "cpu", "--models", "b", "--grid", "8",
         "--large", "2", "--rounds", "2", "--json", str(out)],
        env=dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(out.read_text())["models"]["vit_b"]["call"]
    assert len(row["ratios"]) == 2 and row["median_ratio"] > 0
    assert abs(row["median_ratio"] - (row["ratios"][0] + row["ratios"][1]) / 2) < 1e-9


@pytest.mark.skipif(__import__("shutil").which("nvcc") is None, reason="nvcc not found")
def test_cuda_kernel_resources_reads_every_kernel_of_a_unit():
    """Offline screen of the CUDA kernels: one unit for sm_90a lists its Hopper kernels with registers."""
    proc = _run([sys.executable, "scripts/cuda_kernel_resources.py", "--units", "fwd_bf16_hd64", "--archs", "90a",
                 "--filter", "sm90"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ln.split() for ln in proc.stdout.splitlines()[1:] if ln.strip()]
    # no bias / run-64 bias x (m64w4, m128w8, m128w4) x (fixed offset, running max)
    assert len(rows) == 12, proc.stdout
    assert len({" ".join(r[1:-4]) for r in rows}) == 12, proc.stdout  # names tell the variants apart
    for row in rows:
        assert row[0] == "90a" and row[1].startswith("attn_fwd_sm90_kernel<bf16,")
        assert 64 <= int(row[-4]) <= 255, row  # registers


def test_persistent_toy_variants_match_the_reference_under_the_interpreter():
    """scripts/ab_persistent_toy.py checks its loop structures and prologue variants (rel-pos bias, id row, LSE)
    against a float32 reference before it times them; the same check on the CPU (Triton interpreter, tiny
    sizes) keeps the toy honest between GPU runs."""
    proc = _run([sys.executable, str(ROOT / "scripts" / "ab_persistent_toy.py"), "--check-only", "--device", "cpu",
                 "--steps", "1,4", "--set", "all"], env=dict(os.environ, TRITON_INTERPRET="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for variant in ("grid", "persist", "persist+flat", "persist+manual", "+relw", "+relw+relh", "+ids row", "+lse"):
        assert f"check {variant} " in proc.stdout


def test_ship_tuning_files_records_by_gpu_and_keeps_other_entries(tmp_path):
    """scripts/ship_tuning.py files recorded autotune choices into the shipped file of their GPU and Triton
    version, replaces an entry of the same key, keeps the file's other entries, and skips what is no record."""
    import json

    cfg = lambda m: {"config": {"block_m": m, "block_n": 64, "num_warps": 4, "num_stages": 3}, "ms": {}}  # noqa: E731
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    old_key = "NVIDIA H100 80GB HBM3/sm90|triton3.6.0|bfloat16|d64|masked=0"
    kept_key = "NVIDIA H100 80GB HBM3/sm90|triton3.6.0|bfloat16|d80|masked=0"
    (tuned / "h100_sm90_triton3.6.json").write_text(json.dumps({old_key: cfg(64), kept_key: cfg(64)}))
    recorded = {
        old_key: cfg(128),  # replaces
        "NVIDIA H100 80GB HBM3/sm90|triton3.6.0|bfloat16|d64|masked=1": cfg(64),  # added
        "NVIDIA H200/sm90|triton3.6.1|bfloat16|d64|masked=0": cfg(128),  # another GPU: its own file
        "cpu|triton3.6.0|bfloat16|d64": cfg(64),  # no GPU/sm key: skipped
        "NVIDIA H200/sm90|triton3.6.0|bfloat16|d80": {"config": {"block_m": 64}},  # not a full config: skipped
    }
    rec = tmp_path / "autotune.json"
    rec.write_text(json.dumps(recorded))
    dry = _run([sys.executable, "scripts/ship_tuning.py", str(rec), "--tuned-dir", str(tuned), "--dry-run"])
    assert dry.returncode == 0, dry.stderr
    assert json.loads((tuned / "h100_sm90_triton3.6.json").read_text())[old_key] == cfg(64)  # nothing written
    proc = _run([sys.executable, "scripts/ship_tuning.py", str(rec), "--tuned-dir", str(tuned)])
    assert proc.returncode == 0, proc.stderr
    assert "h100_sm90_triton3.6.json: added 1, replaced 1, unchanged 0" in proc.stdout
    assert "skipped 2 entries" in proc.stderr
    h100 = json.loads((tuned / "h100_sm90_triton3.6.json").read_text())
    assert h100[old_key] == cfg(128) and h100[kept_key] == cfg(64) and len(h100) == 3
    h200 = json.loads((tuned / "h200_sm90_triton3.6.json").read_text())
    assert list(h200) == ["NVIDIA H200/sm90|triton3.6.1|bfloat16|d64|masked=0"]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    proc = _run([sys.executable, "scripts/ship_tuning.py", str(bad), "--tuned-dir", str(tuned)])
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr


def test_cuda_kernel_resources_reads_a_loop_schedule():
    """cuda_kernel_resources.py --pipeline: the longest loop of a kernel's SASS as runs of wgmma, their waits,
    barriers and the instructions between them (a serialized pipeline shows as a wait right after each run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ckr", ROOT / "scripts" / "cuda_kernel_resources.py")
    ckr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ckr)
    sass = "\n".join([
        "        /*0000*/                   MOV R1, c[0x0][0x28] ;",
        "        /*0010*/                   LDS.128 R4, [R2] ;",  # loop starts here (the branch target)
        "        /*0020*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;",
        "        /*0030*/                   WARPGROUP.ARRIVE ;",
        "        /*0040*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT ;",
        "        /*0050*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24 ;",
        "        /*0060*/                   FFMA R3, R4, R5, R6 ;",
        "        /*0070*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;",
        "        /*0080*/                   MUFU.EX2 R7, R3 ;",
        "        /*0090*/                   STL [R1], R7 ;",
        "        /*00a0*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;",
        "        /*00b0*/               @P0 BRA 0x10 ;",
        "        /*00c0*/                   EXIT ;",
    ])
    got = ckr.loop_schedule(sass)
    assert got["schedule"] == "1 bar HGMMAx2 1 wait<=1 2 wait<=0 1", got
    assert got["lds"] == 1 and got["local"] == 1 and got["length"] == 11
    assert ckr.loop_schedule("        /*0000*/  EXIT ;")["schedule"] == ""
