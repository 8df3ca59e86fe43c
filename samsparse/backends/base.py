"""The backend contract: one ``attend`` function, one ``why_not`` question.

Every backend computes

    out[b, h, i] = sum_j softmax_j(scale * <q_i, k_j> + bias[i, j]) * v_j

over the key tokens j that ``mask`` allows for query i, where ``bias`` is SAM's
decomposed rel-pos term (``rel_pos``) or 0. Inputs:

- q: [B, H, Nq, D]; k, v: [B, Hkv, Nk, D] with H % Hkv == 0 (GQA/MQA); any
  strides (views straight out of the qkv projection are fine); one dtype.
- mask: a :class:`~samsparse.masks.BlockMask` or None (dense).
- rel_pos: a :class:`~samsparse.relpos.RelPos` or None.
- scale: softmax scale, default D ** -0.5.
- return_lse: also return the natural-log LSE, float32 [B, H, Nq] (-inf for a
  query that reads no key).

Output: [B, H, Nq, D] in q's dtype (a fresh tensor; its layout may differ).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch

from ..masks.block_mask import BlockMask
from ..relpos import RelPos

__all__ = [
    "Backend",
    "AttentionCall",
    "check_inputs",
    "UnsupportedCall",
    "MaskKernelArgs",
    "mask_kernel_args",
    "empty_outputs",
    "empty_varlen_outputs",
    "check_varlen_args",
    "resolve_scale",
    "LAYOUT_SEQUENCE",
    "LAYOUT_TILES",
]

LAYOUT_SEQUENCE = 0  # kernel code of the "sequence" layout
LAYOUT_TILES = 1  # kernel code of the "tiles" layout


class UnsupportedCall(NotImplementedError):
    """Raised when a backend is asked to run a call it cannot run (with the reason)."""


@dataclass(frozen=True)
class AttentionCall:
    """Shapes, dtype and features of one attention call: what ``why_not`` looks at."""

    device: torch.device
    dtype: torch.dtype
    batch: int
    heads: int
    kv_heads: int
    nq: int
    nk: int
    head_dim: int
    layout: str | None  # None when dense
    has_rel_pos: bool
    rel_pos_tables: bool
    return_lse: bool

    @classmethod
    def of(
        cls,
        q: torch.Tensor,
        k: torch.Tensor,
        mask: BlockMask | None,
        rel_pos: RelPos | None,
        return_lse: bool,
    ) -> "AttentionCall":
        return cls(
            device=q.device,
            dtype=q.dtype,
            batch=q.shape[0],
            heads=q.shape[1],
            kv_heads=k.shape[1],
            nq=q.shape[2],
            nk=k.shape[2],
            head_dim=q.shape[3],
            layout=None if mask is None else mask.layout,
            has_rel_pos=rel_pos is not None,
            rel_pos_tables=rel_pos is not None and rel_pos.has_tables,
            return_lse=return_lse,
        )


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockMask | None,
    rel_pos: RelPos | None,
) -> None:
    """Validate a call at the boundary; raise TypeError/ValueError saying how to fix it."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [B, H, N, D], got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    b, h, nq, d = q.shape
    if k.shape != v.shape[:3] + (k.shape[3],) or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must agree in [B, Hkv, Nk], got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != b:
        raise ValueError(f"k/v batch {k.shape[0]} does not match q batch {b}")
    if k.shape[3] != d:
        raise ValueError(f"k head dim {k.shape[3]} does not match q head dim {d}")
    if v.shape[3] != d:
        raise ValueError(f"v head dim {v.shape[3]} differs from q/k head dim {d}; samsparse needs one head dim")
    hkv = k.shape[1]
    if h % hkv != 0:
        raise ValueError(f"q has {h} heads, k/v have {hkv}: the q heads must be a multiple of the k/v heads")
    nk = k.shape[2]
    if mask is not None:
        if not isinstance(mask, BlockMask):
            raise TypeError(f"mask must be a samsparse BlockMask or None, got {type(mask).__name__}")
        mask.check_sequence(nq, nk)
        mask.validate(b, h)
    if rel_pos is not None:
        if not isinstance(rel_pos, RelPos):
            raise TypeError(f"rel_pos must be a samsparse RelPos or None, got {type(rel_pos).__name__}")
        rel_pos.validate(q, nk)


@dataclass
class Backend:
    """A named attention implementation behind the common contract.

    Subclasses set ``name`` and ``priority`` (higher wins in ``auto``), implement
    :meth:`_why_not` (a readable reason, or None if the call is supported) and
    :meth:`_attend`.
    """

    name: ClassVar[str] = "base"
    priority: ClassVar[int] = 0
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    head_dims: ClassVar[str] = "any"
    devices: ClassVar[str] = "any"
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        pass

    def is_available(self) -> str | None:
        """None if the backend can run on this machine at all, else why not."""
        return None

    def _why_not(self, call: AttentionCall) -> str | None:
        return None

    def auto_skip_reason(self, q: torch.Tensor) -> str | None:
        """Why ``auto`` should pass over this backend for a call on q's device (it still runs by name)."""
        return None

    def why_not(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor | None = None,
        mask: BlockMask | None = None,
        rel_pos: RelPos | None = None,
        scale: float | None = None,
        return_lse: bool = False,
    ) -> str | None:
        """None if this backend can run the call, else a one-line reason."""
        reason = self.is_available()
        if reason is not None:
            return reason
        if q.dtype not in self.dtypes:
            return f"{self.name} does not support dtype {q.dtype} (supports {', '.join(str(d) for d in self.dtypes)})"
        return self._why_not(AttentionCall.of(q, k, mask, rel_pos, return_lse))

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: BlockMask | None = None,
        rel_pos: RelPos | None = None,
        scale: float | None = None,
        return_lse: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Run attention (see the module docstring for the contract)."""
        check_inputs(q, k, v, mask, rel_pos)
        reason = self.why_not(q, k, v, mask, rel_pos, scale, return_lse)
        if reason is not None:
            raise UnsupportedCall(f"backend {self.name!r} cannot run this call: {reason}")
        return self._attend(q, k, v, mask, rel_pos, resolve_scale(q, scale), return_lse)

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: BlockMask | None,
        rel_pos: RelPos | None,
        scale: float,
        return_lse: bool,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def window_reason(self, head_dim: int, dtype: torch.dtype, window: int, rel_pos: RelPos | None) -> str | None:
        """Why this backend cannot run :meth:`attend_windows` for this case (None when it can).

        Optional capability: a backend with a kernel that reads SAM's windows in place
        overrides this and :meth:`attend_windows`; callers fall back to partitioning.
        """
        return f"backend {self.name!r} has no in-place window kernel"

    def attend_windows(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_fill: torch.Tensor,
        v_fill: torch.Tensor,
        rel_pos: RelPos | None,
        scale: float | None,
        grid: tuple[int, int],
        window: int,
    ) -> torch.Tensor:
        """SAM's windowed attention on the unpadded grid (see ``samsparse.backends.triton.windows``).

        q [B, H, N, D], k/v [B, Hkv, N, D] with N = grid[0] * grid[1]; k_fill/v_fill [Hkv, D]
        (the key / value of a padding token); returns [B, H, N, D] in q's dtype.
        """
        raise UnsupportedCall(self.window_reason(q.shape[-1], q.dtype, window, rel_pos))

    def describe(self) -> dict:
        """A row for the backends table."""
        return {
            "name": self.name,
            "available": self.is_available() is None,
            "why_not": self.is_available() or "",
            "devices": self.devices,
            "dtypes": ", ".join(str(d).replace("torch.", "") for d in self.dtypes),
            "head_dims": self.head_dims,
        }


BackendFactory = Callable[[], Backend]


_DEVICE_ARCHS: dict = {}


def device_arch(device: torch.device) -> int:
    """Compute capability x10 of a CUDA device (90: H100/H200, 80: A100), 0 for any other device.
    Cached per device index (the kernels' plans and kernel choices ask on every call)."""
    if device.type != "cuda":
        return 0
    index = device.index if device.index is not None else torch.cuda.current_device()
    arch = _DEVICE_ARCHS.get(index)
    if arch is None:
        major, minor = torch.cuda.get_device_capability(index)
        arch = _DEVICE_ARCHS[index] = 10 * major + minor
    return arch


def empty_outputs(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' outputs for q [B, H, Nq, D]: out [B, H, Nq, D] in q's dtype, laid out as
    [B, Nq, H, D] (so merging the heads after the call is free), and the float32 LSE [B, H, Nq].

    Also the fake (meta) implementation of the kernel ops: under torch.compile's fake mode the
    factory calls make fake tensors of the same shapes and strides.
    """
    b, h, nq, d = q.shape
    out = torch.empty(b, nq, h, d, dtype=q.dtype, device=q.device).transpose(1, 2)
    lse = torch.empty(b, h, nq, dtype=torch.float32, device=q.device)
    return out, lse


def empty_varlen_outputs(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of the packed variable-length kernels for q [total_q, H, D]: out like q
    (contiguous) and the float32 LSE [H, total_q]."""
    total_q, h, _ = q.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    return out, torch.empty(h, total_q, dtype=torch.float32, device=q.device)


def check_varlen_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    kv_num_blocks: torch.Tensor | None,
    kv_indices: torch.Tensor | None,
    block_size: int | tuple[int, int],
) -> tuple[int, int]:
    """Check the packed variable-length arguments the kernel backends share; returns (bq, bk).

    q [total_q, H, D], k/v [total_k, Hkv, D] with H % Hkv == 0; cu_seqlens_q/k both [B + 1];
    kv_num_blocks [B', H', Mq] and kv_indices [B', H', Mq, Mk] given together (or neither),
    broadcasting to B and H, with Mq >= ceil(max_seqlen_q / bq). Head-dim limits are the
    backend's own.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3:
            raise ValueError(f"{name} must be packed [total, H, D], got shape {tuple(t.shape)}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q has {q.shape[1]} heads, k/v have {k.shape[1]}: need a multiple")
    if cu_seqlens_q.shape != cu_seqlens_k.shape or cu_seqlens_q.dim() != 1:
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must both be [B + 1], got {tuple(cu_seqlens_q.shape)} and {tuple(cu_seqlens_k.shape)}"
        )
    bq, bk = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
    if (kv_num_blocks is None) != (kv_indices is None):
        raise ValueError("give both kv_num_blocks and kv_indices, or neither (dense)")
    if kv_num_blocks is not None:
        batch = cu_seqlens_q.shape[0] - 1
        mq = -(-max_seqlen_q // bq)
        if kv_num_blocks.dim() != 3 or kv_indices.dim() != 4:
            raise ValueError(
                f"kv_num_blocks must be [B', H', Mq] and kv_indices [B', H', Mq, Mk], got "
                f"{tuple(kv_num_blocks.shape)} and {tuple(kv_indices.shape)}"
            )
        if kv_num_blocks.shape[0] not in (1, batch) or kv_num_blocks.shape[1] not in (1, q.shape[1]):
            raise ValueError(f"kv_num_blocks {tuple(kv_num_blocks.shape)} does not broadcast to B={batch}, H={q.shape[1]}")
        if kv_num_blocks.shape[2] < mq:
            raise ValueError(
                f"kv_num_blocks has {kv_num_blocks.shape[2]} query blocks but max_seqlen_q={max_seqlen_q} "
                f"with block {bq} needs {mq}"
            )
    return int(bq), int(bk)


def resolve_scale(q: torch.Tensor, scale: float | None) -> float:
    """The softmax scale of a call: ``scale``, or D ** -0.5 for q [..., D] when None."""
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


def expand_kv(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Repeat GQA/MQA key/value heads [B, Hkv, N, D] to [B, heads, N, D] (a view when Hkv == 1)."""
    hkv = t.shape[1]
    if hkv == heads:
        return t
    if hkv == 1:
        return t.expand(-1, heads, -1, -1)
    return t.repeat_interleave(heads // hkv, dim=1)


def token_mask_for(mask: BlockMask | None, device: torch.device) -> torch.Tensor | None:
    """Cached dense token mask [B', H', Nq, Nk] on ``device`` (None when dense)."""
    if mask is None:
        return None
    cache = mask._derived
    key = ("token_mask", device)
    if key not in cache:
        cache[key] = mask.to_token_mask(device)
    return cache[key]


@dataclass(frozen=True)
class MaskKernelArgs:
    """What a kernel needs of a mask: index form plus the token->block geometry as ints.

    kv_num_blocks / kv_indices: int32 index form (None when dense); layout:
    LAYOUT_SEQUENCE or LAYOUT_TILES; block_q / block_k: tokens per block (0 when
    dense); tile_grid / tile: (gh, gw) and (th, tw) for LAYOUT_TILES, else (0, 0);
    mean_keys: key tokens a query block reads, averaged over batch, heads and query blocks, for
    kernels whose best loop depends on the number of key steps; 0.0 when dense or not known
    without a host sync (see ``BlockMask.key_blocks_per_row``: masks built per call on the GPU,
    e.g. content-based ones, are never read back here).
    """

    kv_num_blocks: torch.Tensor | None = None
    kv_indices: torch.Tensor | None = None
    layout: int = LAYOUT_SEQUENCE
    block_q: int = 0
    block_k: int = 0
    tile_grid: tuple[int, int] = (0, 0)
    tile: tuple[int, int] = (0, 0)
    mean_keys: float = 0.0


_DENSE_ARGS = MaskKernelArgs()


def mask_kernel_args(mask: BlockMask | None, device: torch.device) -> MaskKernelArgs:
    """Kernel arguments for ``mask`` on ``device`` (indices cached on the mask).

    Tiles as wide as the grid are runs of consecutive tokens, so they are handed to
    kernels as the sequence layout with the same block ids (the faster path).
    """
    if mask is None:
        return _DENSE_ARGS
    # cached on the mask like its index form (a mask's blocks are not to be changed in place)
    key = ("kernel_args", device)
    hit = mask._derived.get(key)
    if hit is None:
        hit = mask._derived[key] = _mask_kernel_args(mask, device)
    return hit


def _mask_kernel_args(mask: BlockMask, device: torch.device) -> MaskKernelArgs:
    idx = mask.to_indices(device)
    bq, bk = mask.block_size
    mean_keys = (mask.key_blocks_per_row(read_device=False) or 0.0) * bk  # (the mask's own key block)
    if mask.layout == "tiles":
        (gh, gw), (th, tw) = mask.grid, mask.tile
        if tw < gw:
            return MaskKernelArgs(idx.kv_num_blocks, idx.kv_indices, LAYOUT_TILES, bq, bk, (gh, gw), (th, tw),
                                  mean_keys)
        bq = bk = th * gw
    return MaskKernelArgs(idx.kv_num_blocks, idx.kv_indices, LAYOUT_SEQUENCE, bq, bk, mean_keys=mean_keys)
