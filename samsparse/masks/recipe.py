"""Mask recipes: a short string or dict naming a builder and its arguments.

Configs and checkpoints store the recipe, never the mask tensor; each attention
call builds (once, then cached by the caller) the mask for its own token grid.

Grammar of the string form::

    recipe := name [":" key "=" value ("," key "=" value)*]
    value  := true | false | none | int | float | AxB[xC...] (a tuple) | item;item[;...] (a list)

e.g. ``"dense"``, ``"local:radius=2"``, ``"hierarchical:density=0.25,tile=8x16"``,
``"region:image_size=768x1024,points=512x300;100x80,radius=1"``. A list of one
item keeps a trailing ``;`` (``points=512x300;``).
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from .block_mask import BlockMask
from .dynamic import dynamic
from .hierarchical import hierarchical
from .image_to_prompt import image_to_prompt
from .local import _int_pair, local_2d
from .region import region_focused

__all__ = ["MaskRecipe", "parse_recipe", "build_mask", "RECIPE_NAMES"]

# name -> (builder, arguments the recipe's build() supplies itself)
_BUILDERS: dict[str, tuple[Callable[..., Any] | None, frozenset[str]]] = {
    "dense": (None, frozenset()),
    "local": (local_2d, frozenset({"grid", "num_heads", "device"})),
    "hierarchical": (hierarchical, frozenset({"grid", "num_heads", "device"})),
    "region": (region_focused, frozenset({"grid", "num_heads", "device"})),
    "image_to_prompt": (image_to_prompt, frozenset({"device"})),
    "dynamic": (dynamic, frozenset({"q", "k", "grid"})),
}
_ALIASES = {"local_2d": "local", "region_focused": "region"}
RECIPE_NAMES: tuple[str, ...] = tuple(_BUILDERS)
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _valid_keys(name: str) -> list[str]:
    builder, supplied = _BUILDERS[name]
    if builder is None:
        return []
    return [p for p in inspect.signature(builder).parameters if p not in supplied]


def _default(name: str, key: str) -> Any:
    return inspect.signature(_BUILDERS[name][0]).parameters[key].default


# ------------------------------------------------------------------ values
def _parse_scalar(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if "x" in low:
        parts = low.split("x")
        try:
            return tuple(_parse_number(p) for p in parts)
        except ValueError:
            pass
    return text


def _parse_number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _parse_value(text: str) -> Any:
    text = text.strip()
    if ";" in text:
        items = text.split(";")
        if items and items[-1].strip() == "":
            items = items[:-1]
        return tuple(_parse_scalar(t.strip()) for t in items)
    return _parse_scalar(text)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float, str)):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, tuple):
        if len(value) >= 2 and not any(isinstance(v, tuple) for v in value):
            return "x".join(_format_value(v) for v in value)
        return ";".join(_format_value(v) for v in value) + (";" if len(value) <= 1 else "")
    raise ValueError(f"cannot write {value!r} in a recipe")


def _normalize(value: Any, where: str) -> Any:
    """Canonical form of a recipe value: bool/int/float/str/None, tuples for sequences."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    elif hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_normalize(v, where) for v in value)
    if isinstance(value, str):  # "8x16" in a dict means the same as in a string
        value = _parse_value(value)
        if not isinstance(value, str):
            return _normalize(value, where)
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}: non-finite value {value!r}")
        return value
    raise ValueError(f"{where}: {type(value).__name__} value {value!r} is not allowed; use numbers, bools, "
                     "strings, None or (nested) lists of numbers")  # fmt: skip


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _canonical_name(name: Any) -> str:
    if not isinstance(name, str):
        raise ValueError(f"a recipe name must be a string, one of {list(RECIPE_NAMES)}; got {name!r}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _BUILDERS:
        raise ValueError(f"unknown mask recipe {name!r}; valid names: {', '.join(RECIPE_NAMES)}")
    return key


# ------------------------------------------------------------------ recipe
@dataclass(frozen=True)
class MaskRecipe:
    """A mask builder's name and its arguments (what configs store).

    Attributes:
        name: one of :data:`RECIPE_NAMES` (``local_2d`` / ``region_focused`` are accepted aliases).
        kwargs: the builder's arguments, less those :meth:`build` supplies (``grid``,
            ``num_heads``, ``device``; ``q``, ``k``, ``grid`` for ``dynamic``). Sequences
            are stored as tuples.

    ``str(recipe)`` gives the string form and ``parse_recipe(str(recipe)) == recipe``;
    :meth:`to_dict` / :meth:`from_dict` give a JSON-serialisable form.
    """

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        name = _canonical_name(self.name)
        if not isinstance(self.kwargs, Mapping):
            raise ValueError(f"recipe kwargs must be a mapping, got {type(self.kwargs).__name__}")
        valid = _valid_keys(name)
        kwargs = {}
        for key, value in self.kwargs.items():
            if key not in valid:
                hint = f"valid keys: {', '.join(valid)}" if valid else "it takes no arguments"
                raise ValueError(f"unknown argument {key!r} for mask recipe {name!r}; {hint}")
            value = _normalize(value, f"{name}:{key}")
            if _parse_value(_format_value(value)) != value:
                raise ValueError(f"{name}:{key}={value!r} cannot be written in a recipe string")
            kwargs[key] = value
        if name == "region" and kwargs.get("points") is None and kwargs.get("boxes") is None:
            raise ValueError(
                "mask recipe 'region' needs points and/or boxes, e.g. "
                "'region:image_size=768x1024,points=512x300;' (x, y in original image pixels)"
            )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "kwargs", dict(sorted(kwargs.items())))

    def __hash__(self) -> int:
        return hash(str(self))

    def __str__(self) -> str:
        if not self.kwargs:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_format_value(v)}" for k, v in self.kwargs.items())

    # ------------------------------------------------------------- forms
    @classmethod
    def parse(cls, text: str) -> "MaskRecipe":
        """Recipe from its string form (see the module docstring); ``""`` is ``dense``."""
        if not isinstance(text, str):
            raise ValueError(f"a recipe string must be a str, got {type(text).__name__}")
        text = text.strip()
        if not text:
            return cls("dense")
        name, _, rest = text.partition(":")
        name = _canonical_name(name)
        kwargs: dict[str, Any] = {}
        for piece in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = piece.partition("=")
            key = key.strip()
            if not eq or not _KEY.match(key):
                raise ValueError(f"bad recipe argument {piece!r} in {text!r}; write key=value, e.g. 'local:radius=2'")
            if key in kwargs:
                raise ValueError(f"argument {key!r} given twice in recipe {text!r}")
            kwargs[key] = _parse_value(value)
        return cls(name, kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{"name": ..., **kwargs}`` with tuples as lists."""
        return {"name": self.name, **{k: _jsonable(v) for k, v in self.kwargs.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MaskRecipe":
        """Recipe from ``{"name": ..., **kwargs}`` (the form of :meth:`to_dict`)."""
        if not isinstance(data, Mapping) or "name" not in data:
            raise ValueError(f"a recipe dict needs a 'name' key (one of {', '.join(RECIPE_NAMES)}), got {data!r}")
        return cls(data["name"], {k: v for k, v in data.items() if k != "name"})

    # ------------------------------------------------------------- building
    @property
    def is_dynamic(self) -> bool:
        """True when the mask depends on q and k: build it per call with :meth:`build_dynamic`."""
        return self.name == "dynamic"

    @property
    def is_dense(self) -> bool:
        return self.name == "dense"

    @staticmethod
    def valid_keys(name: str) -> list[str]:
        """The arguments a recipe called ``name`` accepts (from its builder's signature)."""
        return _valid_keys(_canonical_name(name))

    def _tile(self, grid: tuple[int, int]) -> tuple[int, int]:
        # a window smaller than the tile (14x14 vs 8x16) gets the tile clipped to the grid
        th, tw = _int_pair(self.kwargs.get("tile", _default(self.name, "tile")), "tile")
        return min(th, grid[0]), min(tw, grid[1])

    def build(
        self,
        grid: tuple[int, int],
        num_heads: int,
        device: torch.device | str | None = None,
    ) -> BlockMask | None:
        """The mask for one attention call over a token ``grid`` (gh, gw) with ``num_heads`` heads.

        Returns None for ``dense`` and for ``dynamic`` (use :meth:`build_dynamic`).
        ``image_to_prompt`` is not grid-based: it is built from its own arguments
        (``num_heads`` from the call unless the recipe sets it). The tile is clipped
        to the grid.
        """
        if self.name in ("dense", "dynamic"):
            return None
        builder = _BUILDERS[self.name][0]
        if self.name == "image_to_prompt":
            return builder(**{"num_heads": num_heads, **self.kwargs}, device=device)
        grid = _int_pair(grid, "grid")
        kwargs = {**self.kwargs, "tile": self._tile(grid)}
        return builder(grid=grid, num_heads=num_heads, device=device, **kwargs)

    def build_dynamic(self, q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int]) -> BlockMask:
        """The ``dynamic`` mask for one call: q, k [B, H, N, D] over ``grid`` -> blocks [B, H, M, M]."""
        if not self.is_dynamic:
            raise ValueError(f"recipe {str(self)!r} is not dynamic; use build(grid, num_heads, device)")
        grid = _int_pair(grid, "grid")
        kwargs = {**self.kwargs, "tile": self._tile(grid)}
        return dynamic(q, k, grid, **kwargs)


def parse_recipe(recipe: "str | Mapping[str, Any] | MaskRecipe | None") -> MaskRecipe:
    """A :class:`MaskRecipe` from a string, a dict, a MaskRecipe (returned as is) or None (dense)."""
    if recipe is None:
        return MaskRecipe("dense")
    if isinstance(recipe, MaskRecipe):
        return recipe
    if isinstance(recipe, str):
        return MaskRecipe.parse(recipe)
    if isinstance(recipe, Mapping):
        return MaskRecipe.from_dict(recipe)
    raise ValueError(f"a mask recipe is a string, a dict or a MaskRecipe, got {type(recipe).__name__}")


def build_mask(
    recipe: "str | Mapping[str, Any] | MaskRecipe | None",
    grid: tuple[int, int],
    num_heads: int,
    device: torch.device | str | None = None,
) -> BlockMask | None:
    """``parse_recipe(recipe).build(grid, num_heads, device)``: None for dense (and for dynamic)."""
    return parse_recipe(recipe).build(grid=grid, num_heads=num_heads, device=device)
