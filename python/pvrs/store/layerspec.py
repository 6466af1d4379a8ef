"""One grammar for layer flags (`--layers`, `--layer`) in every command: numbers, inclusive
ranges (`10-14` or `10:14`), commas or spaces between items, negatives counting from the end
(`-1` is the last layer) when the layer count is known."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pvrs.errors import InputError

_ITEM = re.compile(r"(-?\d+)(?:[-:](-?\d+))?")
_SEPARATORS = re.compile(r"[,\s]+")


def parse_layers(
    spec: Sequence[str], available: Sequence[int] | None = None, flag: str = "--layers"
) -> list[int]:
    """`["3", "10-12", "-1"]` -> `[3, 10, 11, 12, L-1]`, in the order given, without repeats.
    `available` (the layers that exist, e.g. `range(L)`) resolves negatives and rejects
    layers outside it; without it negatives are an error."""
    known = sorted(available) if available is not None else None
    span = f"{known[0]}..{known[-1]}" if known else "none saved"
    out: list[int] = []
    for item in _SEPARATORS.split(" ".join(str(s) for s in spec).strip()):
        m = _ITEM.fullmatch(item)
        if not m:
            raise InputError(f"{flag} {item!r}: use layer numbers or ranges like 4-12")
        ends = [int(g) for g in m.groups() if g is not None]
        if min(ends) < 0 and known is None:
            raise InputError(f"{flag} {item!r}: negative layers need the layer count; give block indices")
        if known is not None and any(e < -len(known) for e in ends):
            raise InputError(f"{flag} {item!r}: only {len(known)} layers exist ({span})")
        lo, hi = ends[0], ends[-1]
        if known is not None:
            lo, hi = (known[e] if e < 0 else e for e in (lo, hi))
        if lo > hi:
            raise InputError(f"{flag} {item!r}: the range goes backwards; write it low-high")
        for layer in range(lo, hi + 1):
            if known is not None and layer not in known:
                raise InputError(f"{flag} {item!r}: layer {layer} does not exist ({span})")
            if layer not in out:
                out.append(layer)
    return out
