"""SAM's MLP first layer + GELU: cuBLAS (+ eager / Inductor GELU) against fused Triton GEMM kernels.

    python scripts/bench_linear_act.py --json out.json --md out.md

An experiment, kept with its result: can ``GELU(x @ W^T + b)`` in one Triton kernel (the
activation applied to the fp32 accumulator before the single store) beat cuBLAS's GEMM
followed by the pointwise GELU, which writes the ``[tokens, 4*C]`` hidden tensor, reads it
back and writes it again? Two kernels: pointer loads (grouped tile order), and TMA
descriptors with persistent programs (optionally warp-specialized); GELU exact (libdevice
erf) or with erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7). On an H100 the answer
was no (benchmarks/RESULTS.md): the Triton GEMM core ran ~20% behind cuBLAS and the erf
epilogue is not hidden, so the package keeps cuBLAS + GELU.

Shapes: lin1 of vit_b (K=768, N=3072) and vit_h (K=1280, N=5120) at B=8 and B=1
(M = B*64*64 tokens). Every row is measured in the same run; each fused config's
max error is taken against an fp32 reference (``gelu(x @ W^T + b)`` in float32).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from samsparse.backends.triton.kernel import INTERPRET, _dot  # noqa: E402
from samsparse.benchmark import time_fn  # noqa: E402

ACT_NONE = 0
ACT_GELU = 1  # exact: 0.5 * x * (1 + erf(x / sqrt(2))), as torch.nn.GELU()


@triton.jit
def _erf_as(x):
    """erf(x) by Abramowitz & Stegun 7.1.26: |error| <= 1.5e-7 (fp32 erf's own accuracy).

    One reciprocal and one exp2 (both MUFU) and a degree-5 polynomial, where libdevice's
    erff spends ~2x the instructions on two branches: it is the epilogue's main cost.
    """
    a = tl.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    y = 1.0 - poly * tl.exp2(-(a * a) * 1.4426950408889634)
    return tl.where(x < 0, -y, y)


@triton.jit
def _apply_act(acc, ACT: tl.constexpr):
    if ACT == 1:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    if ACT == 2:
        acc = 0.5 * acc * (1.0 + _erf_as(acc * 0.7071067811865476))
    return acc


@triton.jit
def _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of ``tile`` in grouped order: GROUP_M row tiles sweep the columns together."""
    per_group = GROUP_M * num_pid_n
    group = tile // per_group
    first_m = group * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (tile % per_group) % group_rows
    pid_n = (tile % per_group) // group_rows
    return pid_m, pid_n


@triton.jit
def _linear_act_ptr(
    x_ptr, w_ptr, b_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    """y[M, N] = act(x[M, K] @ w[N, K]^T + b[N]); fp32 accumulation, y in y's dtype.

    IEEE: exact fp32 products (fp32 inputs, no TF32); UPCAST: bf16 products in fp32
    (the CPU interpreter's bf16 dot is wrong).
    """
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _tile_coords(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # rows past M / N read row 0 (their results are never stored): no masks in the loop
    rows = tl.where(offs_m < M, offs_m, 0)
    cols = tl.where(offs_n < N, offs_n, 0)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + cols[None, :] * stride_wn + offs_k[:, None] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(x_ptrs)
            b = tl.load(w_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = _dot(a, b, acc, IEEE, UPCAST)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols).to(tl.float32)[None, :]
    acc = _apply_act(acc, ACT)
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _linear_act_tma(
    x_desc, w_desc, y_desc, b_ptr,
    M, N, K,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    NUM_PROGRAMS: tl.constexpr, EPI_SPLIT: tl.constexpr, WS: tl.constexpr, FLATTEN: tl.constexpr,
):
    """As :func:`_linear_act_ptr` with TMA descriptors, persistent over the output tiles.

    ``x_desc`` blocks [BLOCK_M, BLOCK_K], ``w_desc`` [BLOCK_N, BLOCK_K], ``y_desc``
    [BLOCK_M, BLOCK_N // EPI_SPLIT] (the epilogue stores the tile in EPI_SPLIT column
    slices, which keeps its registers and shared-memory staging small).
    """
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    for tile in tl.range(tl.program_id(0), num_tiles, NUM_PROGRAMS, flatten=FLATTEN, warp_specialize=WS):
        pid_m, pid_n = _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(k_tiles):
            a = x_desc.load([off_m, k * BLOCK_K])
            b = w_desc.load([off_n, k * BLOCK_K])
            acc = tl.dot(a, b.T, acc)
        if HAS_BIAS:
            cols = off_n + tl.arange(0, BLOCK_N)
            acc += tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        acc = _apply_act(acc, ACT)
        if EPI_SPLIT == 1:
            y_desc.store([off_m, off_n], acc.to(y_desc.dtype))
        else:
            acc = tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2))
            acc = tl.permute(acc, (0, 2, 1))
            left, right = tl.split(acc)
            y_desc.store([off_m, off_n], left.to(y_desc.dtype))
            y_desc.store([off_m, off_n + BLOCK_N // 2], right.to(y_desc.dtype))


# ---------------------------------------------------------------------------- host side
_ACTS = {None: 0, "none": 0, "gelu": 1, "gelu_as": 2}


@dataclass(frozen=True)
class GemmConfig:
    """One launch of a fused linear kernel: tile sizes, warps, stages, and which kernel."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8
    tma: bool = False
    epi_split: int = 1
    ws: bool = False
    flatten: bool = True

    def __str__(self) -> str:
        kind = f"tma/e{self.epi_split}{'/ws' if self.ws else ''}{'' if self.flatten else '/nf'}" if self.tma else "ptr"
        return f"{kind}/M{self.block_m}/N{self.block_n}/K{self.block_k}/w{self.num_warps}/s{self.num_stages}/g{self.group_m}"


INTERPRET_GEMM = GemmConfig(32, 32, 32, 4, 1)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def tma_supported(device: torch.device) -> bool:
    """TMA descriptors: CUDA sm90+ with a Triton that has host tensor descriptors."""
    if device.type != "cuda" or INTERPRET:
        return False
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def default_gemm_config(device: torch.device, dtype: torch.dtype) -> GemmConfig:
    if dtype == torch.float32 or INTERPRET:
        return INTERPRET_GEMM if INTERPRET else GemmConfig(64, 64, 32, 4, 2)
    if tma_supported(device):
        return GemmConfig(128, 256, 64, 8, 3, tma=True, epi_split=2)
    return GemmConfig(128, 128, 64, 8, 3)


def gemm_candidates(device: torch.device, dtype: torch.dtype) -> list[GemmConfig]:
    if dtype == torch.float32:
        return [GemmConfig(64, 64, 32, 4, 2), GemmConfig(32, 64, 32, 4, 2)]
    out = [
        GemmConfig(128, 128, 64, 8, 3),
        GemmConfig(128, 128, 64, 4, 4),
        GemmConfig(128, 256, 64, 8, 3),
        GemmConfig(64, 128, 64, 4, 4),
    ]
    if tma_supported(device):
        out = [
            GemmConfig(128, 256, 64, 8, 3, tma=True, epi_split=2),
            GemmConfig(128, 256, 64, 8, 4, tma=True, epi_split=2),
            GemmConfig(128, 128, 64, 8, 4, tma=True, epi_split=1),
            GemmConfig(128, 128, 64, 4, 4, tma=True, epi_split=1),
            GemmConfig(128, 128, 128, 8, 3, tma=True, epi_split=1),
        ] + out
    return out


def launch(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, act: int, cfg: GemmConfig) -> None:
    """Run one kernel: ``out[M, N] = act(x2[M, K] @ weight[N, K]^T + bias)``."""
    m, k = x2.shape
    n = weight.shape[0]
    has_bias = bias is not None
    b_arg = bias if has_bias else out
    if cfg.tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        x_desc = TensorDescriptor.from_tensor(x2, [cfg.block_m, cfg.block_k])
        w_desc = TensorDescriptor.from_tensor(weight, [cfg.block_n, cfg.block_k])
        y_desc = TensorDescriptor.from_tensor(out, [cfg.block_m, cfg.block_n // cfg.epi_split])
        tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
        programs = min(tiles, _sm_count(x2.device.index if x2.device.index is not None else torch.cuda.current_device()))
        _linear_act_tma[(programs,)](
            x_desc, w_desc, y_desc, b_arg, m, n, k,
            HAS_BIAS=has_bias, ACT=act,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
            NUM_PROGRAMS=programs, EPI_SPLIT=cfg.epi_split, WS=cfg.ws, FLATTEN=cfg.flatten,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        return
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    _linear_act_ptr[grid](
        x2, weight, b_arg, out, m, n, k,
        x2.stride(0), x2.stride(1), weight.stride(0), weight.stride(1), out.stride(0), out.stride(1),
        HAS_BIAS=has_bias, ACT=act,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        EVEN_K=(k % cfg.block_k == 0), IEEE=x2.dtype == torch.float32,
        UPCAST=INTERPRET and x2.dtype == torch.bfloat16,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def linear_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    act: str | None = "gelu",
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """``act(F.linear(x, weight, bias))`` in one kernel.

    Args:
        x: ``[..., K]`` fp16/bf16/fp32 on CUDA (or CPU under ``TRITON_INTERPRET=1``).
        weight: ``[N, K]``, same dtype and device; bias: ``[N]`` or None.
        act: "gelu" (exact erf GELU) or None.
        config: force a launch config (default: cached / autotuned).

    Returns:
        ``[..., N]`` in x's dtype.
    """
    if act not in _ACTS:
        raise ValueError(f"act must be one of {sorted(a for a in _ACTS if a)} or None, got {act!r}")
    k = x.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != k:
        raise ValueError(f"weight must be [N, {k}] for input [..., {k}], got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise TypeError(f"{name} is {t.dtype} on {t.device}, x is {x.dtype} on {x.device}: cast them to one dtype/device")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    out = torch.empty(x2.shape[0], weight.shape[0], device=x.device, dtype=x.dtype)
    if x2.shape[0] == 0:
        return out.reshape(*lead, weight.shape[0])
    cfg = config or default_gemm_config(x2.device, x2.dtype)
    launch(x2, weight, bias, out, _ACTS[act], cfg)
    return out.reshape(*lead, weight.shape[0])




SHAPES = {
    "vit_b_b8": (8 * 4096, 768, 3072),
    "vit_b_b1": (4096, 768, 3072),
    "vit_h_b8": (8 * 4096, 1280, 5120),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--acts", default="gelu", help="comma list of none,gelu,gelu_as")
    ap.add_argument("--only-extra", action="store_true", help="time only the extra configs")
    ap.add_argument("--json")
    ap.add_argument("--md")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_linear_act.py needs a CUDA GPU", file=sys.stderr)
        raise SystemExit(2)
    device = torch.device("cuda")
    dtype = torch.bfloat16
    rows = []
    for name in args.shapes.split(","):
        m, k, n = SHAPES[name]
        torch.manual_seed(0)
        x = torch.randn(m, k, device=device, dtype=dtype)
        w = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
        b = (torch.randn(n, device=device) * 0.1).to(dtype)
        ref = F.gelu(F.linear(x.float(), w.float(), b.float()))
        flops = 2.0 * m * n * k

        def record(label, fn, check=True):
            try:
                out = fn()
                err = (out.float() - ref).abs().max().item() if check else float("nan")
                ms, p90 = time_fn(fn, device, warmup=5, repeat=args.repeat)
            except Exception as exc:  # a config that does not compile / fit
                print(f"{name:9s} {label:40s} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                return
            row = {"shape": name, "m": m, "k": k, "n": n, "variant": label, "ms": ms, "p90": p90,
                   "tflops": flops / ms / 1e9, "max_err": err}
            rows.append(row)
            print(f"{name:9s} {label:40s} {ms:8.4f} ms {row['tflops']:7.1f} TF/s err {err:.4f}", flush=True)

        record("cublas linear (no gelu)", lambda: F.linear(x, w, b), check=False)
        record("cublas linear + eager gelu", lambda: F.gelu(F.linear(x, w, b)))
        comp = torch.compile(lambda t: F.gelu(F.linear(t, w, b)), dynamic=False)
        record("inductor linear+gelu (default)", lambda: comp(x))
        record("cublasLt addmm gelu(tanh)", lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True))
        for cfg in ([] if args.only_extra else gemm_candidates(device, dtype)) + extra_configs():
            for act in args.acts.split(","):
                act_arg = None if act == "none" else act
                record(f"fused {act} {cfg}", lambda cfg=cfg, a=act_arg: linear_act(x, w, b, a, config=cfg), check=act != "none")
        if args.acts == "gelu":
            record("fused auto", lambda: linear_act(x, w, b, "gelu"))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    if args.md:
        lines = ["| shape | variant | ms | TF/s | max err |", "|---|---|---:|---:|---:|"]
        lines += [f"| {r['shape']} | {r['variant']} | {r['ms']:.4f} | {r['tflops']:.0f} | {r['max_err']:.4f} |" for r in rows]
        Path(args.md).write_text("\n".join(lines) + "\n")


def extra_configs():
    return [
        GemmConfig(128, 128, 64, 8, 4, tma=True, epi_split=1),
        GemmConfig(128, 128, 64, 8, 4, tma=True, epi_split=2),
        GemmConfig(128, 256, 64, 8, 3, tma=True, epi_split=2),
        GemmConfig(128, 128, 64, 8, 4, tma=True, epi_split=1, ws=True),
        GemmConfig(128, 128, 64, 8, 4, tma=True, epi_split=1, ws=True, flatten=False),
        GemmConfig(128, 256, 64, 8, 3, tma=True, epi_split=2, ws=True, flatten=False),
        GemmConfig(128, 128, 64, 4, 4, tma=True, epi_split=1, ws=True, flatten=False),
        GemmConfig(128, 128, 64, 8, 3),
    ]


if __name__ == "__main__":
    main()
