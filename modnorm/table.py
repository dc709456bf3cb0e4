"""Text tables: the one formatter behind ``describe(model)``, ``describe(optimizer)`` and the benchmarks' reports."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

__all__ = ["format_table", "markdown_table", "fraction_text"]


def fraction_text(x: float) -> str:
    """``x`` with 6 significant digits, followed by its exact fraction when it has a small denominator
    (e.g. ``0.238095 (5/21)``)."""
    frac = Fraction(x).limit_denominator(1000)
    exact = abs(float(frac) - x) <= 1e-12 * max(1.0, abs(x))
    text = f"{x:.6g}"
    return f"{text} ({frac})" if exact and frac.denominator > 1 else text


def format_table(rows: Sequence[Mapping[str, str]], columns: Sequence[str]) -> str:
    """Left-aligned text table of ``rows`` under ``columns`` (missing cells are blank)."""
    widths = {c: max([len(c)] + [len(r.get(c, "")) for r in rows]) for c in columns}
    line = lambda cells: "  ".join(cells[i].ljust(widths[c]) for i, c in enumerate(columns)).rstrip()  # noqa: E731
    out = [line(list(columns)), line(["-" * widths[c] for c in columns])]
    out += [line([r.get(c, "") for c in columns]) for r in rows]
    return "\n".join(out)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats printed with 3 significant digits ("diverged" when not finite)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "diverged" if not math.isfinite(v) else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
