"""SparseAttention: a drop-in for SAM's (and timm's SAM ViT) encoder attention.

It keeps the original parameter names (``qkv``, ``proj``, ``rel_pos_h``,
``rel_pos_w``) so any original state_dict loads into it, takes the same input
``[B, H, W, C]`` and returns the same output, and hands q/k/v (strided views of
the qkv projection), the rel-pos tables and a block mask to a backend.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .backends import registry
from .backends.base import Backend
from .masks.block_mask import BlockMask
from .relpos import RelPos, _tensor_key, _TensorIdentity

__all__ = ["SparseAttention", "MaskSource", "is_sam_attention"]

log = logging.getLogger(__name__)


def is_sam_attention(module: nn.Module) -> bool:
    """True for modules shaped like SAM's encoder attention (found by structure, not class).

    That is: a ``qkv`` Linear of width 3*dim, a ``proj`` Linear, ``num_heads``, and
    ``use_rel_pos`` (with ``rel_pos_h``/``rel_pos_w`` when it is set). Covers
    segment_anything, timm's SAM ViT and models that vendor SAM's encoder.
    """
    if isinstance(module, SparseAttention):
        return False
    qkv = getattr(module, "qkv", None)
    proj = getattr(module, "proj", None)
    if not isinstance(qkv, nn.Linear) or not isinstance(proj, nn.Linear):
        return False
    if not isinstance(getattr(module, "num_heads", None), int) or not hasattr(module, "use_rel_pos"):
        return False
    if qkv.out_features != 3 * qkv.in_features:
        return False
    if module.use_rel_pos and not (hasattr(module, "rel_pos_h") and hasattr(module, "rel_pos_w")):
        return False
    return True


class MaskSource:
    """Where a patched module gets its block mask for one call.

    Holds a mask recipe (or a fixed BlockMask, or None for dense) and caches the
    mask built for each (grid, heads, device), so every patched block of a model
    that shares this source uses one mask object: built once, never per call.
    """

    def __init__(self, mask: Any = None) -> None:
        self.fixed: BlockMask | None = None
        self.recipe = None
        if isinstance(mask, BlockMask):
            self.fixed = mask
            mask.key_blocks_per_row()  # read once here (carried by .to()), so kernels never sync for it
        elif mask is not None and not (isinstance(mask, str) and mask.strip() in ("", "dense")):
            from .masks import parse_recipe

            recipe = parse_recipe(mask)
            self.recipe = None if recipe.name == "dense" else recipe
        self._cache: dict[tuple, BlockMask | None] = {}

    @property
    def is_dense(self) -> bool:
        return self.fixed is None and self.recipe is None

    def describe(self) -> str | None:
        """The recipe string stored in configs (None when dense, 'fixed' for a tensor mask)."""
        if self.recipe is not None:
            return str(self.recipe)
        if self.fixed is not None:
            return "fixed"
        return None

    def get(self, grid: tuple[int, int], heads: int, q: torch.Tensor, k: torch.Tensor) -> BlockMask | None:
        """The BlockMask for attention over a token ``grid`` with ``heads`` heads (None = dense)."""
        if self.is_dense:
            return None
        if self.fixed is not None:
            n = grid[0] * grid[1]
            if self.fixed.seq_len != (n, n):
                raise ValueError(
                    f"the fixed mask was built for seq_len {self.fixed.seq_len}, but this block attends over "
                    f"a {grid[0]}x{grid[1]} grid ({n} tokens); pass a mask recipe instead so each block "
                    "gets a mask for its own grid"
                )
            # one copy per device: a copy made per call would rebuild its kernel indices in every call
            moved = self._cache.get(("fixed", q.device))
            if moved is None:
                moved = self._cache[("fixed", q.device)] = self.fixed.to(q.device)
            return moved
        if self.recipe.is_dynamic:
            return self.recipe.build_dynamic(q, k, grid)
        key = (tuple(grid), heads, q.device)
        if key not in self._cache:
            mask = self.recipe.build(grid=tuple(grid), num_heads=heads, device=q.device)
            mask.key_blocks_per_row()  # read once per static mask, so kernels never sync for it
            self._cache[key] = mask
        return self._cache[key]


class SparseAttention(nn.Module):
    """Multi-head attention with SAM's decomposed rel-pos, run by a samsparse backend.

    Args:
        dim: channels C.
        num_heads: heads H (head dim D = C // H).
        qkv_bias: bias in the qkv projection.
        use_rel_pos: add SAM's decomposed relative-position bias.
        input_size: (h, w) the rel-pos tables were trained for (tables have 2*h-1 / 2*w-1 rows).
        mask: None / "dense", a mask recipe (str or dict), a MaskRecipe, a BlockMask,
            or a shared :class:`MaskSource`.
        backend: backend name ("auto", "triton", "sdpa", ...) or a Backend.

    Input and output: [B, H, W, C] (windows already partitioned by the block).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
        mask: Any = None,
        backend: str | Backend = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size=(h, w) is needed when use_rel_pos=True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
        self.mask_source = mask if isinstance(mask, MaskSource) else MaskSource(mask)
        self.backend = backend
        object.__setattr__(self, "_original", None)
        self._chosen: dict[tuple, Backend] = {}
        self._tables: dict[tuple, tuple] = {}  # key -> (rh, rw, identity of rel_pos_h, of rel_pos_w)
        self._window_chosen: dict[tuple, Backend | None] = {}

    @classmethod
    def from_attention(
        cls,
        attn: nn.Module,
        mask: Any = None,
        backend: str | Backend = "auto",
    ) -> "SparseAttention":
        """Wrap an existing SAM/timm attention module, sharing its parameters and submodules."""
        if not is_sam_attention(attn):
            raise TypeError(f"{type(attn).__name__} does not look like SAM's encoder attention (qkv, proj, rel_pos_h/w)")
        if getattr(attn, "rope", None) is not None:
            raise ValueError("attention with rotary embeddings (rope) is not supported; patch SAM-style rel-pos blocks only")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.num_heads = attn.num_heads
        new.scale = float(getattr(attn, "scale", (attn.qkv.in_features // attn.num_heads) ** -0.5))
        new.use_rel_pos = bool(attn.use_rel_pos)
        # every submodule and parameter keeps its name, so state_dict keys do not change
        for name, child in attn.named_children():
            setattr(new, name, child)
        for name, param in attn.named_parameters(recurse=False):
            setattr(new, name, param)
        for name, buf in attn.named_buffers(recurse=False):
            new.register_buffer(name, buf)
        new.mask_source = mask if isinstance(mask, MaskSource) else MaskSource(mask)
        new.backend = backend
        object.__setattr__(new, "_original", attn)  # kept out of the module tree and the state_dict
        new._chosen = {}
        new._tables = {}
        new._window_chosen = {}
        new.training = attn.training
        return new

    def to_original(self) -> nn.Module:
        """The original module class holding this module's current parameters (for unpatch)."""
        if self._original is None:
            raise ValueError("this SparseAttention was not made from an existing module; nothing to restore")
        orig = self._original
        for name, child in self.named_children():
            setattr(orig, name, child)
        for name, param in self.named_parameters(recurse=False):
            setattr(orig, name, param)
        orig.train(self.training)
        return orig

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, mask={self.mask_source.describe() or 'dense'}, backend={self.backend!r}"

    def _backend_for(self, q, k, v, mask, rel_pos) -> tuple[Backend, bool]:
        """The backend for this call, and whether the call was already checked for it.

        Backend support depends on shapes, dtype, device and the mask's layout, not on
        the mask's content, so the choice (and the input check that came with it) is
        cached per such key: later calls go straight to the kernel.
        """
        # the batch size is left out (no backend's support depends on it), so the choice made by a
        # warm-up call at one batch size holds at every other: a compiled call at a new batch size
        # then traces the cached path and not registry.select (a graph break, then a recompile).
        # A mask with its own batch dim (not broadcast) keeps the batch in the key: its check depends on it.
        mask_key = None
        if mask is not None:
            per_batch = len(mask.shape) == 4 and mask.shape[0] != 1
            mask_key = (mask.layout, (mask.shape[0], q.shape[0]) if per_batch else 1)
        key = (q.shape[1:], k.shape[1:], q.stride(), k.stride(), q.dtype, q.device, mask_key)
        chosen = self._chosen.get(key)
        if chosen is not None:
            return chosen, True
        chosen = registry.select(q, k, v, mask, rel_pos, self.scale, backend=self.backend)
        if len(self._chosen) > 64:  # bounded: varying input sizes must not grow memory
            self._chosen.clear()
        self._chosen[key] = chosen
        if not torch.compiler.is_compiling():
            log.debug("attention %s on %s uses backend %s", tuple(q.shape), q.device, chosen.name)
        return chosen, False

    def _rel_pos(self, grid: tuple[int, int], dtype: torch.dtype) -> RelPos | None:
        """Rel-pos tables gathered for ``grid`` in ``dtype``; cached while the parameters are unchanged.

        Gathering (and casting) the tables costs two small kernels per call; in inference
        they only change when the parameters do (tracked by their version counters).
        """
        if not self.use_rel_pos:
            return None
        h, w = self.rel_pos_h, self.rel_pos_w
        key = None
        if not (torch.is_grad_enabled() and (h.requires_grad or w.requires_grad)):
            # None while torch.compile traces, and for parameters made under torch.inference_mode (no
            # version counter to tell an in-place update, e.g. load_state_dict, from no change): their
            # tables are gathered in every call
            key_h, key_w = _tensor_key(h), _tensor_key(w)
            if key_h is not None and key_w is not None:
                key = (grid, dtype, key_h, key_w)
        if key is not None:
            hit = self._tables.get(key)
            # (the same parameter objects: a replaced parameter can reuse a freed one's address)
            if hit is not None and hit[2].matches(h, key[2]) and hit[3].matches(w, key[3]):
                return RelPos(grid, grid, rh=hit[0], rw=hit[1], toeplitz=True)  # gathered by from_tables
        rel_pos = RelPos.from_tables(h, w, grid)
        if rel_pos.rh.dtype != dtype:
            rel_pos.rh, rel_pos.rw = rel_pos.rh.to(dtype), rel_pos.rw.to(dtype)
        if key is not None:
            if len(self._tables) > 8:
                self._tables.clear()
            self._tables[key] = (rel_pos.rh, rel_pos.rw, _TensorIdentity(h, key[2]), _TensorIdentity(w, key[3]))
        return rel_pos

    def _window_backend(self, x: torch.Tensor, window: int) -> Backend | None:
        """The backend that runs this module's windows in place for input x, or None (partition).

        In place needs: a dense mask, no q/k norm, and a selected backend with a window kernel
        that accepts the case. Cached per (grid, dtype, device, window), not per batch size.
        """
        key = (x.shape[1:], x.dtype, x.device, window)
        if key in self._window_chosen:
            return self._window_chosen[key]
        chosen = None
        if self.mask_source.is_dense and not self._has_qk_norm():
            head_dim = x.shape[-1] // self.num_heads
            # a window call's shape, to ask the registry which backend would run the windows
            probe = x.new_empty(1, self.num_heads, window * window, head_dim)
            rel_pos = self._rel_pos((window, window), x.dtype)
            try:
                candidate = registry.select(probe, probe, probe, None, rel_pos, self.scale, backend=self.backend)
            except ValueError:
                candidate = None  # the named backend cannot run it: the partition path reports why
            if candidate is not None:
                reason = candidate.window_reason(head_dim, x.dtype, window, rel_pos)
                if reason is None:
                    chosen = candidate
                else:
                    log.debug("windows are partitioned (%s)", reason)
        if len(self._window_chosen) > 16:
            self._window_chosen.clear()
        self._window_chosen[key] = chosen
        return chosen

    def forward_windowed(self, x: torch.Tensor, window: int) -> torch.Tensor:
        """SAM's windowed attention over the whole grid: x [B, H, W, C] -> [B, H, W, C].

        Same result as SAM's ``window_partition`` -> this module -> ``window_unpartition``.
        With a backend that has a window kernel (Triton) the qkv projection runs on the
        unpadded grid and the kernel reads the windows in place (padding tokens' keys and
        values are the qkv bias, as SAM's projection of a zero token is); otherwise the
        grid is partitioned as SAM does. Forward hooks of this module do not run here.
        """
        if x.dim() != 4:
            raise ValueError(f"forward_windowed expects [B, H, W, C] input, got {tuple(x.shape)}")
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        backend = self._window_backend(x, window)
        if backend is None:
            from .windows import window_partition, window_unpartition

            parts, padded = window_partition(x, window)
            return window_unpartition(self(parts), window, padded, (x.shape[1], x.shape[2]))
        b, gh, gw, c = x.shape
        q, k, v = self._heads(x)
        bias = self.qkv.bias
        if bias is None:
            k_fill = v_fill = x.new_zeros(self.num_heads, c // self.num_heads)
        else:
            # under autocast the projection adds the bias in q's dtype: a zero token gives exactly that
            k_fill = bias[c : 2 * c].view(self.num_heads, -1).to(q.dtype)
            v_fill = bias[2 * c :].view(self.num_heads, -1).to(q.dtype)
        rel_pos = self._rel_pos((window, window), q.dtype)
        out = backend.attend_windows(q, k, v, k_fill, v_fill, rel_pos, self.scale, (gh, gw), window)
        return self._project_out(out, b, gh, gw)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [B, heads, N, D] of x [B, H, W, C]: strided views of the projection (no copies)."""
        b, gh, gw, _ = x.shape
        return self.qkv(x).reshape(b, gh * gw, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def _has_qk_norm(self) -> bool:
        q_norm = getattr(self, "q_norm", None)
        return q_norm is not None and not isinstance(q_norm, nn.Identity)

    def _project_out(self, out: torch.Tensor, b: int, gh: int, gw: int) -> torch.Tensor:
        """Attention output [B, heads, N, D] -> heads merged, output projection (and its dropout): [B, H, W, C]."""
        out = out.transpose(1, 2).reshape(b, gh, gw, -1)
        attn_drop = getattr(self, "attn_drop", None)
        if attn_drop is not None and self.training and attn_drop.p > 0:
            log.warning("attention dropout is not applied by samsparse backends (p=%s)", attn_drop.p)
        out = self.proj(out)
        proj_drop = getattr(self, "proj_drop", None)
        if proj_drop is not None:
            out = proj_drop(out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] -> [B, H, W, C]."""
        if x.dim() != 4:
            raise ValueError(f"SparseAttention expects [B, H, W, C] input, got {tuple(x.shape)}")
        b, gh, gw, _ = x.shape
        q, k, v = self._heads(x)
        return self._project_out(self._attend_heads(q, k, v, (gh, gw)), b, gh, gw)

    def _attend_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Everything between the projections: q, k, v [B, heads, N, D] (views of the qkv projection,
        N = grid[0] * grid[1]) -> attention output [B, heads, N, D] (q/k norms, the rel-pos tables, the
        mask for this grid, the backend chosen for this call and cached)."""
        if self._has_qk_norm():
            q, k = self.q_norm(q), self.k_norm(k)
        rel_pos = self._rel_pos(grid, q.dtype)
        mask = self.mask_source.get(grid, self.num_heads, q, k)
        backend, checked = self._backend_for(q, k, v, mask, rel_pos)
        if checked:
            return backend._attend(q, k, v, mask, rel_pos, self.scale, False)
        return backend.attend(q, k, v, mask, rel_pos, self.scale)
