"""describe(): one row per parameter, overridable cells, readable numbers."""

from __future__ import annotations

import pytest
from torch import nn

import modnorm
from modnorm import layers as L
from modnorm.describe import COLUMNS


def _model() -> nn.Module:
    return modnorm.Sequential(L.Embedding(7, 4), L.Linear(4, 8), L.GELU(), L.Linear(8, 7, bias=False))


def test_one_row_per_parameter_with_every_column() -> None:
    model = _model()
    rows = modnorm.describe_rows(model)
    assert [r["name"] for r in rows] == [n for n, _ in model.named_parameters()]
    assert all(set(r) == set(COLUMNS) for r in rows)
    by = {r["name"]: r for r in rows}
    assert by["1.weight"]["shape"] == "8×4" and by["1.weight"]["role"] == "hidden" and by["1.bias"]["role"] == "vector"
    assert by["3.weight"]["role"] == "head" and by["3.weight"]["norm"].startswith("RowNorm")
    budgets = modnorm.budgets(model)
    for name, r in by.items():
        assert float(r["budget"].split()[0]) == pytest.approx(budgets[name], rel=1e-5)
    # exact fractions are shown: μ = 3 and GELU's slope sits between layer 1 and the head
    assert by["3.weight"]["budget"] == "0.333333 (1/3)"
    assert "(" not in by["1.weight"]["budget"]  # 1/(3·1.1289…) has no small denominator


def test_table_text() -> None:
    text = modnorm.describe(_model())
    lines = text.splitlines()
    assert lines[0].split() == list(COLUMNS)
    assert len(lines) == 2 + 4
    assert lines[2].startswith("0.weight") and "embedding" in lines[2]
    assert "Tuple" not in text and "Chain" in modnorm.describe(_model(), tree=True)


def test_overrides_replace_and_add_columns() -> None:
    model = _model()
    text = modnorm.describe(model, overrides={"1.weight": {"preconditioner": "sania", "lr": "0.02"}, "3.weight": {"lr": "0.01"}})
    header, _, row0, row1 = text.splitlines()[:4]
    assert header.split() == [*COLUMNS, "lr"]
    assert "sania" in text.splitlines()[3] and text.splitlines()[3].rstrip().endswith("0.02")
    assert text.splitlines()[5].rstrip().endswith("0.01")
    only = modnorm.describe(model, columns=["name", "budget"])
    assert only.splitlines()[0].split() == ["name", "budget"]
    with pytest.raises(KeyError, match="not parameter names"):
        modnorm.describe(model, overrides={"nope": {"lr": "1"}})
    with pytest.raises(ValueError, match="unknown columns"):
        modnorm.describe(model, columns=["name", "colour"])
    with pytest.raises(ValueError, match="'name' column"):
        modnorm.describe(model, overrides={"1.weight": {"name": "x"}})
