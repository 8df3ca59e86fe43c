"""SAM's decomposed relative-position bias, as one small value backends share.

SAM adds to every attention logit

    attn[q, k] += rel_h[q, row(k)] + rel_w[q, col(k)]
    rel_h[b, h, q, kr] = <q_unscaled[b, h, q], Rh[row(q), kr]>
    rel_w[b, h, q, kc] = <q_unscaled[b, h, q], Rw[col(q), kc]>

where ``Rh`` [gh_q, gh_k, D] / ``Rw`` [gw_q, gw_k, D] are gathered (and, when
the grid differs from the trained one, linearly interpolated) from the learned
tables ``rel_pos_h`` [2*S-1, D] / ``rel_pos_w``. :class:`RelPos` carries the
grids and either the gathered tables or precomputed terms; each backend asks
for the form it needs.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["RelPos", "gather_rel_pos"]


def _build_relative_index(q_size: int, k_size: int, device: torch.device) -> torch.Tensor:
    """int64 [q_size, k_size] row index into the resized table, built on ``device`` (no host copy)."""
    q_coords = torch.arange(q_size, device=device, dtype=torch.float32)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=device, dtype=torch.float32)[None, :] * max(q_size / k_size, 1.0)
    return ((q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)).long()


_cached_relative_index = lru_cache(maxsize=64)(_build_relative_index)


def _relative_index(q_size: int, k_size: int, device: torch.device) -> torch.Tensor:
    """The index of :func:`_build_relative_index`, cached per (sizes, device) in eager mode.

    Under ``torch.compile`` it is built in the graph instead (a constant there): Dynamo
    does not honour ``lru_cache`` and warns about it.
    """
    if torch.compiler.is_compiling():
        return _build_relative_index(q_size, k_size, device)
    return _cached_relative_index(q_size, k_size, device)


def gather_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position table for every (query, key) coordinate pair along one axis.

    Same function as SAM's ``get_rel_pos``: resize ``rel_pos`` [L, D] linearly to
    ``2*max(q_size, k_size)-1`` rows if needed, then index by scaled offset. The
    index is built on the table's device and cached, so no host-device copy (and no
    synchronisation) happens per call.

    Returns:
        [q_size, k_size, D] tensor, same dtype/device as ``rel_pos``.
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist, mode="linear")
        resized = resized.reshape(-1, max_rel_dist).permute(1, 0)
    else:
        resized = rel_pos
    return resized[_relative_index(q_size, k_size, resized.device)]


def _tensor_key(t: torch.Tensor) -> tuple | None:
    """Identity of a tensor's contents for caching (storage, view, dtype, in-place version); None while
    torch.compile traces, for inference tensors (no version counter) or for tensors without storage
    (nothing is cached then)."""
    if torch.compiler.is_compiling() or t.is_inference():  # (inference tensors have no version counter)
        return None
    try:
        return (t.device, t.dtype, t.data_ptr(), tuple(t.shape), tuple(t.stride()), t._version)
    except (RuntimeError, NotImplementedError):
        return None


class _TensorIdentity:
    """The tensor a cache entry was made from: the same live object, unmodified since.

    A key of storage address, view and version counter alone is not enough: once a tensor is freed,
    the caching allocator hands its address to the next tensor of that size, whose version counter
    starts at 0 again, and a cache keyed that way would return results computed from the old tensor.
    """

    __slots__ = ("ref", "key")

    def __init__(self, t: torch.Tensor, key: tuple) -> None:
        self.ref = weakref.ref(t)
        self.key = key

    def matches(self, t: torch.Tensor, key: tuple | None) -> bool:
        return key is not None and key == self.key and self.ref() is t

    # pickled (a model saved whole, a deepcopy) it matches nothing: the copies are other tensors
    def __getstate__(self) -> tuple:
        return self.key

    def __setstate__(self, key: tuple) -> None:
        self.key = key
        self.ref = _no_tensor


def _no_tensor() -> None:
    return None


@dataclass
class RelPos:
    """Decomposed rel-pos bias for one attention call.

    Args:
        q_grid: (gh_q, gw_q) — the query tokens are this grid, row-major (Nq = gh_q*gw_q).
        k_grid: (gh_k, gw_k) — likewise for keys.
        rh: gathered height table [gh_q, gh_k, D] (see :func:`gather_rel_pos`), or None.
        rw: gathered width table [gw_q, gw_k, D], or None.
        rel_h: precomputed height terms [B, H, Nq, gh_k], or None.
        rel_w: precomputed width terms [B, H, Nq, gw_k], or None.
        toeplitz: the tables depend on the coordinate difference only
            (``rh[a, b] == R[a - b + g - 1]`` for one raw table R), as
            :meth:`from_tables` makes them when q and k grids are equal. Kernels may
            then read the raw rows instead of the gathered table; leave False for
            tables built any other way.

    Either the tables or the terms must be given. :meth:`terms` returns the terms
    (computing them once from q and the tables if needed).
    """

    q_grid: tuple[int, int]
    k_grid: tuple[int, int]
    rh: torch.Tensor | None = None
    rw: torch.Tensor | None = None
    rel_h: torch.Tensor | None = None
    rel_w: torch.Tensor | None = None
    toeplitz: bool = False
    # which q the terms in rel_h / rel_w were computed from by :meth:`terms` (None: given by the caller)
    _terms_of: _TensorIdentity | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_tables(
        cls,
        rel_pos_h: torch.Tensor,
        rel_pos_w: torch.Tensor,
        q_grid: tuple[int, int],
        k_grid: tuple[int, int] | None = None,
    ) -> "RelPos":
        """Build from SAM's learned tables rel_pos_h [2*S_h-1, D] and rel_pos_w [2*S_w-1, D]."""
        k_grid = q_grid if k_grid is None else k_grid
        rh = gather_rel_pos(q_grid[0], k_grid[0], rel_pos_h)
        rw = gather_rel_pos(q_grid[1], k_grid[1], rel_pos_w)
        return cls(tuple(q_grid), tuple(k_grid), rh=rh, rw=rw, toeplitz=tuple(q_grid) == tuple(k_grid))

    @property
    def has_tables(self) -> bool:
        return self.rh is not None and self.rw is not None

    def validate(self, q: torch.Tensor, nk: int) -> None:
        """Check grids, tables and terms against q [B, H, Nq, D] and the key count."""
        b, h, nq, d = q.shape
        gq, gk = self.q_grid, self.k_grid
        if gq[0] * gq[1] != nq:
            raise ValueError(f"rel_pos q_grid {gq} has {gq[0] * gq[1]} tokens but q has Nq={nq}")
        if gk[0] * gk[1] != nk:
            raise ValueError(f"rel_pos k_grid {gk} has {gk[0] * gk[1]} tokens but k has Nk={nk}")
        if (self.rel_h is not None or self.rel_w is not None) and not self._terms_are_cache:
            if self.rel_h is None or self.rel_w is None:
                raise ValueError("rel_pos needs both rel_h and rel_w terms, or neither")
            want_h, want_w = (b, h, nq, gk[0]), (b, h, nq, gk[1])
            if tuple(self.rel_h.shape) != want_h or tuple(self.rel_w.shape) != want_w:
                raise ValueError(
                    f"rel_h/rel_w must be {want_h} / {want_w}, got {tuple(self.rel_h.shape)} / {tuple(self.rel_w.shape)}"
                )
        elif self.has_tables:
            want_h, want_w = (gq[0], gk[0], d), (gq[1], gk[1], d)
            if tuple(self.rh.shape) != want_h or tuple(self.rw.shape) != want_w:
                raise ValueError(
                    f"rel-pos tables must be {want_h} / {want_w}, got {tuple(self.rh.shape)} / {tuple(self.rw.shape)}"
                )
        else:
            raise ValueError("RelPos needs either the gathered tables (rh, rw) or the terms (rel_h, rel_w)")

    def terms(self, q: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """rel_h [B, H, Nq, gh_k] and rel_w [B, H, Nq, gw_k] for q [B, H, Nq, D] (unscaled).

        Computed once per q (cached on this object) in q's dtype, exactly as SAM does,
        unless ``dtype`` asks for another (e.g. float64 for the reference). Terms given by
        the caller are returned as they are; cached terms are recomputed when called with
        another q (another tensor object, even one at the same address, or the same one
        modified in place).
        """
        key = _tensor_key(q)
        ready = self._ready_terms(q, key)
        if ready is not None:
            if dtype is None:
                return ready
            return ready[0].to(dtype), ready[1].to(dtype)
        if not self.has_tables:
            raise ValueError("RelPos has neither terms nor tables")
        cache = dtype is None
        dtype = q.dtype if dtype is None else dtype
        b, h, nq, d = q.shape
        gh, gw = self.q_grid
        r_q = q.to(dtype).reshape(b, h, gh, gw, d)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, self.rh.to(dtype)).reshape(b, h, nq, -1)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, self.rw.to(dtype)).reshape(b, h, nq, -1)
        if cache and key is not None:
            self.rel_h, self.rel_w, self._terms_of = rel_h, rel_w, _TensorIdentity(q, key)
        return rel_h, rel_w

    def ready_terms(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The terms held for q without computing anything: the caller's, or those :meth:`terms`
        cached for this very q (same tensor, not modified since); None when there are none."""
        # q's identity matters only for cached terms (and costs a few us per call to read)
        return self._ready_terms(q, _tensor_key(q) if self._terms_are_cache else None)

    @property
    def _terms_are_cache(self) -> bool:
        """rel_h / rel_w were cached by :meth:`terms` (the tables are the truth), not given."""
        return self._terms_of is not None and self.has_tables

    def _ready_terms(self, q: torch.Tensor, key: tuple | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.rel_h is None or self.rel_w is None:
            return None
        if not self._terms_are_cache or self._terms_of.matches(q, key):
            return self.rel_h, self.rel_w
        return None

    def bias(self, q: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Materialised additive bias [B, H, Nq, Nk] (what SDPA-with-bias needs)."""
        rel_h, rel_w = self.terms(q, dtype)
        b, h, nq, _ = rel_h.shape
        gh, gw = self.k_grid
        return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, h, nq, gh * gw)
