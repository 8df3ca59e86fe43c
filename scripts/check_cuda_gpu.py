"""GPU check of the CUDA backend: build, correctness, speed, memcheck. Never hangs (every stage has a timeout).

    export PYTHONPATH=$PWD
    python scripts/check_cuda_gpu.py                 # all stages, results also in $OUT (if set)
    python scripts/check_cuda_gpu.py --only build,correct,bench
    python scripts/check_cuda_gpu.py --fast          # skips racecheck and the pytest run

Stages (each a subprocess, so a crash or a poisoned CUDA context stays contained):
  build     compile the extension (JIT path, local arch), print the build time and registers
  correct   every case of tests/attention_cases.py::GPU_CASES + extra shapes vs the float64
            reference: one line per case (bias mode, max error, tolerance); first failure in full
  bench     B=8, N=4096 (64x64 grid), bf16, d=64 (H=12) and d=80 (H=16): SDPA flash (no bias)
            vs the CUDA kernel (no bias, fused rel-pos, sparse) vs Triton; ms, TFLOP/s, ratios
  memcheck  compute-sanitizer --tool memcheck on scripts/cuda_memcheck_case.py
  pytest    the remaining GPU tests (varlen, torch.compile, opcheck, auto selection)
  racecheck compute-sanitizer --tool racecheck on a few cases (shared-memory hazards)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

STAGES = ["build", "correct", "bench", "memcheck", "memcheck90", "pytest", "racecheck"]
TIMEOUTS = {"build": 420, "correct": 300, "bench": 300, "memcheck": 420, "memcheck90": 300, "pytest": 300,
            "racecheck": 420}


@contextlib.contextmanager
def _env(overrides: dict):
    """Environment variables set for the block, restored after (the backends read them per call)."""
    saved = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for key, val in saved.items():
            if val is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = val


def out_dir() -> Path | None:
    out = os.environ.get("OUT")
    if not out:
        return None
    p = Path(out)
    p.mkdir(parents=True, exist_ok=True)
    return p


def save(name: str, data) -> None:
    d = out_dir()
    if d is not None:
        (d / name).write_text(json.dumps(data, indent=1, default=str))


def say(*args) -> None:
    print(*args, flush=True)


# ============================================================================ stages (run in subprocesses)
def stage_build() -> int:
    import torch

    from samsparse.backends.cuda import build

    say(f"device: {torch.cuda.get_device_name()} sm_{''.join(map(str, torch.cuda.get_device_capability()))}, "
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), nvcc {build.nvcc_version()}, "
        f"cache {build.cache_root()}")
    t0 = time.perf_counter()
    reason = build.ensure_loaded(verbose=False)
    dt = time.perf_counter() - t0
    info = build.build_info()
    if reason is not None:
        say(f"BUILD FAILED after {dt:.1f} s: {reason}")
        log = reason.rsplit("see log at ", 1)
        if len(log) == 2 and Path(log[1]).exists():
            text = Path(log[1]).read_text()
            errs = [ln for ln in text.splitlines() if "error" in ln.lower()]
            say("---- first error lines of the build log ----")
            say("\n".join(errs[:30]) if errs else text[-6000:])
        save("cuda_build.json", {"ok": False, "seconds": dt, "reason": reason})
        return 1
    built = "compiled" if info["built"] else "loaded from cache"
    say(f"extension {built} in {dt:.1f} s: {info['path']}")
    save("cuda_build.json", {"ok": True, "seconds": dt, "built": info["built"], "path": info["path"]})
    return 0


def stage_correct() -> int:
    import torch
    from attention_cases import GPU_CASES, Case

    from test_cuda_backend import run_case

    extra = [
        Case(8, 4, 4, (14, 14), 64, "bf16", mask="none", rel="terms", strided=True, seed=60),
        Case(2, 2, 2, (9, 11), 16, "fp16", mask="random", block=16, rel="tables", seed=61),
        Case(2, 2, 2, (9, 11), 96, "bf16", mask="none", rel="tables", seed=62),
        Case(1, 2, 2, (16, 64), 64, "fp16", mask="tiles", tile=(4, 64), rel="tables", seed=63),
        Case(1, 2, 2, (16, 40), 64, "bf16", mask="tiles", tile=(4, 32), rel="tables", seed=64),
        Case(1, 2, 2, (8, 32), 128, "fp16", mask="none", rel="tables", seed=65),
        Case(1, 2, 2, (8, 16), 256, "bf16", mask="random", block=64, rel="tables", seed=66),
        Case(1, 2, 2, (7, 9), 64, "fp16", mask="tiles", tile=(4, 4), rel="none", seed=67),
    ]
    results = []
    first_fail = None
    n_ok = n_fail = n_skip = 0
    modes: dict[str, int] = {}
    t_start = time.perf_counter()
    for case in list(GPU_CASES) + extra:
        t0 = time.perf_counter()
        try:
            res = run_case(case)
        except Exception as exc:  # noqa: BLE001
            res = {"case": case.id, "ok": False, "problems": [f"{type(exc).__name__}: {exc}"],
                   "traceback": traceback.format_exc()}
        res["seconds"] = round(time.perf_counter() - t0, 3)
        results.append(res)
        if res.get("skipped"):
            n_skip += 1
            if not res["ok"]:
                n_fail += 1
                first_fail = first_fail or res
            continue
        mode = res.get("mode", "?")
        modes[mode] = modes.get(mode, 0) + 1
        status = "ok  " if res["ok"] else "FAIL"
        err, tol = res.get("err", float("nan")), res.get("tol", float("nan"))
        say(f"{status} {case.id:<60} mode={mode:<8} err={err:.2e} tol={tol:.2e} lse_err={res.get('lse_err', 0):.1e}")
        if res["ok"]:
            n_ok += 1
        else:
            n_fail += 1
            if first_fail is None:
                first_fail = res
                say("     first failure: " + "; ".join(res["problems"]))
            if "traceback" in res:
                say(res["traceback"])
                msg = " ".join(res["problems"]).lower()
                if "illegal" in msg or "misaligned" in msg or "unspecified launch failure" in msg:
                    say("CUDA context is broken: stopping this stage (see memcheck)")
                    break
    say(f"correctness: {n_ok} ok, {n_fail} failed, {n_skip} fp32 cases (must be refused) in "
        f"{time.perf_counter() - t_start:.1f} s; bias modes used: {modes}")
    if first_fail is not None:
        say(f"FIRST FAILING CASE: {first_fail['case']}: {'; '.join(first_fail['problems'])}")
    save("cuda_correct.json", results)
    torch.cuda.synchronize()
    return 1 if n_fail else 0


def _timer():
    try:
        from triton.testing import do_bench

        def run(fn):
            try:
                return float(do_bench(fn, warmup=50, rep=300, return_mode="median"))
            except TypeError:
                return float(do_bench(fn, warmup=50, rep=300))

        return run, "triton.testing.do_bench (median)"
    except Exception:  # noqa: BLE001
        import torch

        from samsparse.benchmark import time_fn

        def run(fn):
            return time_fn(fn, torch.device("cuda"), warmup=5, repeat=30)[0]

        return run, "CUDA events (median of 30)"


def stage_bench() -> int:
    import math

    import torch
    import torch.nn.functional as F

    from samsparse.backends.cuda import backend as cuda_ops
    from samsparse.masks import BlockMask
    from samsparse.relpos import RelPos

    # Triton rows are tuned (its autotuner times candidates on the first call of each shape class, before
    # the timed calls), as users run it: untuned default configs are up to 1.5x slower (d=80 rel-pos)
    try:
        from samsparse.backends.triton import ops as triton_ops
    except Exception as exc:  # noqa: BLE001
        triton_ops = None
        say(f"triton backend not importable: {exc}")
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        sdpa_kernel = None
    from samsparse.backends.cuda import build

    build.require()
    timer, how = _timer()
    say(f"timing with {how}; device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = []
    grid = (64, 64)
    n = grid[0] * grid[1]
    for d, h in ((64, 12), (80, 16)):
        b = 8
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
        tab_h = 0.5 * torch.randn(2 * grid[0] - 1, d, device="cuda", generator=g)
        tab_w = 0.5 * torch.randn(2 * grid[1] - 1, d, device="cuda", generator=g)
        rp_tab = RelPos.from_tables(tab_h.bfloat16(), tab_w.bfloat16(), grid)
        rel_h, rel_w = RelPos(rp_tab.q_grid, rp_tab.k_grid, rp_tab.rh, rp_tab.rw).terms(q)
        rp_terms = RelPos(grid, grid, rel_h=rel_h, rel_w=rel_w)
        # the same terms with rel_h stored key-row-major (each key row's terms contiguous over the queries: the
        # Triton backend's own layout; SAMSPARSE_CUDA_REL_H_LAYOUT=row gives it to the CUDA backend's tables path)
        rel_h_row = rel_h.transpose(2, 3).contiguous().transpose(2, 3)
        rp_terms_row = RelPos(grid, grid, rel_h=rel_h_row, rel_w=rel_w)
        blocks = torch.rand(1, h, n // 128, n // 128, generator=torch.Generator().manual_seed(1)) < 0.25
        blocks |= torch.eye(n // 128, dtype=torch.bool)
        sparse = BlockMask(blocks, 128, n).to("cuda")
        dens = sparse.density()
        flops = 4 * b * h * n * n * d

        def sdpa_on(backend):
            def run():
                if sdpa_kernel is None:
                    return F.scaled_dot_product_attention(q, k, v)
                with sdpa_kernel(getattr(SDPBackend, backend)):
                    return F.scaled_dot_product_attention(q, k, v)

            return run

        sdpa_flash = sdpa_on("FLASH_ATTENTION")

        bias = rp_terms.bias(q)  # [B, H, N, N] in bf16

        def sdpa_bias():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

        out_k = torch.empty(b, n, h, d, device="cuda", dtype=q.dtype).transpose(1, 2)
        lse_k = torch.empty(b, h, n, device="cuda", dtype=torch.float32)
        def raw_call(geom):  # the kernel alone (no Python wrapper, no allocation), with geom's kernel fields
            def run():
                reason = torch.ops.samsparse_cuda.fwd(q, k, v, out_k, lse_k, None, None, None, None, None, None, d ** -0.5, geom)
                if reason:  # the op returns why it refused a call instead of raising
                    raise RuntimeError(reason)
                return out_k

            return run

        cuda_raw = raw_call([0] * 13)  # the extension's defaults: mma.sync
        cuda_raw_wgmma = raw_call([0] * 13 + [1])  # wgmma, the fixed-offset softmax (the extension's default)
        cuda_raw_wgmma_running = raw_call([0] * 13 + [1, 0, 0])  # wgmma, the running max

        blocks64 = torch.rand(1, h, n // 64, n // 64, generator=torch.Generator().manual_seed(3)) < 0.25
        blocks64 |= torch.eye(n // 64, dtype=torch.bool)
        sparse64 = BlockMask(blocks64, 64, n).to("cuda")
        dens64 = sparse64.density()
        wg = {cuda_ops.KERNEL_ENV: "wgmma"}  # the Hopper kernel (compute capability 9.0 only)
        mma = {cuda_ops.KERNEL_ENV: "mma"}  # the "cuda" rows: the mma.sync kernel (wgmma is Hopper's default)

        def kernel_rows(prefix, env, raw):
            """The CUDA backend's rows for one kernel (``env`` picks it; ``raw``: the op alone, no wrapper)."""
            return [
                (f"{prefix} (no bias)", lambda: cuda_ops.attention(q, k, v)[0], 1.0, "flash", env),
                (f"{prefix} kernel only (no bias)", raw, 1.0, "flash", env),
                (f"{prefix} rel-pos terms", lambda: cuda_ops.attention(q, k, v, None, rp_terms)[0], 1.0, "bias", env),
                (f"{prefix} rel-pos tables", lambda: cuda_ops.attention(q, k, v, None, rp_fresh())[0], 1.0, "bias", env),
                (f"{prefix} sparse p={dens:.2f} +rel", lambda: cuda_ops.attention(q, k, v, sparse, rp_terms)[0], dens,
                 "sparse", env),
                (f"{prefix} sparse64 p={dens64:.2f} +rel", lambda: cuda_ops.attention(q, k, v, sparse64, rp_terms)[0],
                 dens64, "sparse64", env),
            ]

        contenders = [
            ("sdpa_cudnn (no bias)", sdpa_on("CUDNN_ATTENTION"), 1.0, "flash"),
            ("sdpa_flash (no bias)", sdpa_flash, 1.0, None),
            *kernel_rows("cuda", mma, cuda_raw),
            ("sdpa + materialised bias", sdpa_bias, 1.0, "bias"),
        ]
        if torch.cuda.get_device_capability() == (9, 0):
            contenders += kernel_rows("wgmma", wg, cuda_raw_wgmma)
            # rel_h key-row-major: terms given, and from the tables (SAMSPARSE_CUDA_REL_H_LAYOUT=row)
            contenders += [
                ("wgmma rel-pos terms, rel_h by key row",
                 lambda: cuda_ops.attention(q, k, v, None, rp_terms_row)[0], 1.0, "bias", wg),
                ("wgmma rel-pos tables, rel_h by key row", lambda: cuda_ops.attention(q, k, v, None, rp_fresh())[0],
                 1.0, "bias", {**wg, cuda_ops.REL_H_LAYOUT_ENV: "row"}),
            ]
            # the same kernel with the running-max softmax (SAMSPARSE_CUDA_FIXED_OFFSET=0), for the A/B
            contenders += kernel_rows("wgmma running", {**wg, cuda_ops.FIXED_OFFSET_ENV: "0"}, cuda_raw_wgmma_running)
            for tile in cuda_ops.WGMMA_TILES:  # every tile shape forced, for the default's A/B
                env = {**wg, cuda_ops.WGMMA_TILE_ENV: tile}
                contenders += [
                    (f"wgmma {tile} (no bias)", lambda: cuda_ops.attention(q, k, v)[0], 1.0, "flash", env),
                    (f"wgmma {tile} rel-pos terms", lambda: cuda_ops.attention(q, k, v, None, rp_terms)[0], 1.0, "bias", env),
                    (f"wgmma {tile} rel-pos terms, rel_h by key row",
                     lambda: cuda_ops.attention(q, k, v, None, rp_terms_row)[0], 1.0, "bias", env),
                ]

        def rp_fresh():
            return RelPos(rp_tab.q_grid, rp_tab.k_grid, rp_tab.rh, rp_tab.rw)

        if triton_ops is not None:
            contenders += [
                ("triton (no bias)", lambda: triton_ops.attention(q, k, v)[0], 1.0, "flash"),
                ("triton rel-pos terms", lambda: triton_ops.attention(q, k, v, None, rp_terms)[0], 1.0, "bias"),
                ("triton rel-pos terms, rel_h by key row",
                 lambda: triton_ops.attention(q, k, v, None, rp_terms_row)[0], 1.0, "bias"),
            ]
        refs = {}
        try:
            refs["flash"] = sdpa_flash()
        except Exception as exc:  # noqa: BLE001
            say(f"sdpa flash failed: {exc}")
        refs["bias"] = sdpa_bias()
        # sparse rows: against the mma.sync kernel (verified on the shared grid) on the same mask
        with _env(mma):
            refs["sparse"] = cuda_ops.attention(q, k, v, sparse, rp_terms)[0].clone()
            refs["sparse64"] = cuda_ops.attention(q, k, v, sparse64, rp_terms)[0].clone()
        base_ms = None
        for name, fn, density, ref, *env in contenders:
            try:
                with _env(env[0] if env else {}):
                    out = fn()
                    torch.cuda.synchronize()
                    err = float((out.float() - refs[ref].float()).abs().max()) if ref in refs else float("nan")
                    ms = timer(fn)
                    launch = cuda_ops.last_launch() if name.startswith(("wgmma", "cuda")) else None
                want = "wgmma" if name.startswith("wgmma") else "mma" if name.startswith("cuda") else None
                if want and "kernel only" not in name and launch["kernel"] != want:
                    raise RuntimeError(f"ran {launch}, not the {want} kernel")
                if name.startswith("wgmma running") and "kernel only" not in name and launch["softmax"] != "running":
                    raise RuntimeError(f"ran {launch}, not the running-max softmax")
            except Exception as exc:  # noqa: BLE001
                say(f"d={d} {name}: FAILED {type(exc).__name__}: {exc}")
                rows.append({"d": d, "h": h, "name": name, "error": str(exc)})
                continue
            tflops = flops * density / (ms * 1e-3) / 1e12
            if name.startswith("sdpa_") and "(no bias)" in name:
                base_ms = ms if base_ms is None else min(base_ms, ms)  # the fastest SDPA path is the ceiling
            rows.append({"d": d, "h": h, "name": name, "ms": ms, "tflops": tflops, "density": density, "max_err": err})
        for row in rows:
            if row.get("d") == d and "ms" in row and base_ms:
                row["vs_flash"] = base_ms / row["ms"] * row["density"]
        del bias
        torch.cuda.empty_cache()
    # SAM windowed attention: 14x14 windows of the padded 70x70 grid, B=8 -> 200 windows, vit_b heads
    wg, wb, wh, wd = (14, 14), 200, 12, 64
    g = torch.Generator(device="cuda").manual_seed(2)
    q, k, v = (torch.randn(wb, wh, 196, wd, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    rp = RelPos.from_tables((0.5 * torch.randn(27, wd, device="cuda", generator=g)).bfloat16(),
                            (0.5 * torch.randn(27, wd, device="cuda", generator=g)).bfloat16(), wg)
    rel_h, rel_w = rp.terms(q)
    rp = RelPos(wg, wg, rel_h=rel_h, rel_w=rel_w)
    wflops = 4 * wb * wh * 196 * 196 * wd
    wbias = rp.bias(q)
    wref = F.scaled_dot_product_attention(q, k, v, attn_mask=wbias)
    wins = [("window sdpa + bias", lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=wbias)),
            ("window cuda rel-pos", lambda: cuda_ops.attention(q, k, v, None, rp)[0])]
    if triton_ops is not None:
        wins.append(("window triton rel-pos", lambda: triton_ops.attention(q, k, v, None, rp)[0]))
    for name, fn in wins:
        try:
            out = fn()
            torch.cuda.synchronize()
            err = float((out.float() - wref.float()).abs().max())
            ms = timer(fn)
            rows.append({"d": wd, "h": wh, "name": name, "ms": ms, "tflops": wflops / (ms * 1e-3) / 1e12,
                         "density": 1.0, "max_err": err, "vs_flash": None})
        except Exception as exc:  # noqa: BLE001
            rows.append({"d": wd, "h": wh, "name": name, "error": str(exc)})
    say("")
    say(f"{'d':>3} {'H':>3}  {'contender':<30} {'ms':>8} {'TFLOP/s':>8} {'x flash thr.':>12} {'max err':>9}")
    for r in rows:
        if "error" in r:
            say(f"{r['d']:>3} {r['h']:>3}  {r['name']:<30} FAILED: {r['error'][:80]}")
            continue
        ratio = f"{r['vs_flash']:.3f}" if r.get("vs_flash") else "-"
        say(f"{r['d']:>3} {r['h']:>3}  {r['name']:<30} {r['ms']:8.3f} {r['tflops']:8.1f} {ratio:>12} {r['max_err']:9.2e}")
    say("(x flash thr. = throughput relative to the fastest SDPA without bias (cuDNN or flash), same d; for sparse rows the "
        "useful FLOPs only; max err vs SDPA flash (no bias), SDPA with the materialised bias, or for sparse rows the "
        "mma.sync kernel on the same mask)")
    save("cuda_bench.json", rows)
    return 0


# ============================================================================ driver
def _sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    homes = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    try:
        from torch.utils import cpp_extension

        homes.insert(0, cpp_extension.CUDA_HOME)
    except Exception:  # noqa: BLE001
        pass
    for home in homes:
        if not home:
            continue
        for cand in (Path(home) / "bin" / "compute-sanitizer", Path(home) / "compute-sanitizer" / "compute-sanitizer"):
            if cand.exists():
                return str(cand)
    return None


def run_sub(name: str, cmd: list[str], timeout: int) -> tuple[int, float]:
    say(f"\n===== {name}: {' '.join(cmd[-4:])} (timeout {timeout} s)")
    t0 = time.perf_counter()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if name in ("memcheck", "memcheck90", "racecheck"):
        env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"  # exact allocation bounds for the sanitizer
    try:
        proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as exc:
        say(f"{name}: could not start: {exc}")
        return 127, 0.0
    import selectors
    import signal

    chunks: list[bytes] = []
    fd = proc.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    deadline = time.time() + timeout
    rc = None
    while True:
        if time.time() > deadline:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
            rc = 124
            say(f"\n{name}: TIMEOUT after {timeout} s (killed)")
            break
        if sel.select(timeout=1.0):
            data = os.read(fd, 65536)  # whatever is there, no waiting for a newline
            if data:
                chunks.append(data)
                sys.stdout.write(data.decode("utf-8", "replace"))
                sys.stdout.flush()
                continue
            try:  # EOF: the child closed its output
                rc = proc.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = 124
            break
        if proc.poll() is not None:
            rest = proc.stdout.read() or b""
            if rest:
                chunks.append(rest)
                sys.stdout.write(rest.decode("utf-8", "replace"))
            rc = proc.returncode
            break
    sel.close()
    lines = [b"".join(chunks).decode("utf-8", "replace")]
    dt = time.perf_counter() - t0
    d = out_dir()
    if d is not None:
        (d / f"cuda_{name}.log").write_text("".join(lines))
    say(f"===== {name}: exit {rc} in {dt:.1f} s")
    return rc, dt


def driver(args) -> int:
    only = [s for s in (args.only.split(",") if args.only else STAGES) if s]
    if args.fast:
        only = [s for s in only if s not in ("racecheck", "pytest")]
    bad = [s for s in only if s not in STAGES]
    if bad:
        say(f"unknown stage(s) {bad}; choose from {STAGES}")
        return 2
    me = [sys.executable, str(Path(__file__).resolve())]
    summary = {}
    for stage in only:
        timeout = TIMEOUTS[stage]
        if stage in ("build", "correct", "bench"):
            rc, dt = run_sub(stage, me + ["--stage", stage], timeout)
        elif stage in ("memcheck", "memcheck90", "racecheck"):
            san = _sanitizer()
            if san is None:
                say(f"\n===== {stage}: compute-sanitizer not found, skipped")
                summary[stage] = "skipped (no compute-sanitizer)"
                continue
            extra = {"racecheck": ["--small"], "memcheck90": ["--wgmma"]}.get(stage, [])
            tool = ["--tool", "memcheck" if stage == "memcheck90" else stage, "--error-exitcode", "3", "--print-limit", "20"]
            if stage == "racecheck":
                tool += ["--racecheck-report", "hazard"]
            rc, dt = run_sub(stage, [san, *tool, sys.executable, str(ROOT / "scripts" / "cuda_memcheck_case.py"), *extra],
                             timeout)
        else:  # pytest: the GPU tests not already covered by 'correct'
            rc, dt = run_sub(stage, [sys.executable, "-m", "pytest", "-q", "-x", "-m", "gpu", "-p", "no:cacheprovider",
                                     str(ROOT / "tests" / "test_cuda_backend.py"), "-k", "not matches_reference"],
                             timeout)
        summary[stage] = f"exit {rc} ({dt:.0f} s)"
        if stage == "build" and rc != 0:
            say("build failed: later stages skipped")
            break
    say("\n===== summary")
    for k, v in summary.items():
        say(f"  {k:<10} {v}")
    save("cuda_check_summary.json", summary)
    return 0 if all(v.startswith("exit 0") or v.startswith("skipped") for v in summary.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["build", "correct", "bench"], help=argparse.SUPPRESS)
    parser.add_argument("--only", default="", help=f"comma-separated stages from {STAGES}")
    parser.add_argument("--fast", action="store_true", help="skip racecheck and pytest")
    args = parser.parse_args()
    if args.stage:
        import torch

        if not torch.cuda.is_available():
            say("no CUDA GPU: nothing to check")
            return 1
        return {"build": stage_build, "correct": stage_correct, "bench": stage_bench}[args.stage]()
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
