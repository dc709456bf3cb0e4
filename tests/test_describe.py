"""describe(): one row per parameter, overridable cells, readable numbers; describe(optimizer) and the lr it applies."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import modnorm
from modnorm import cli
from modnorm import layers as L
from modnorm.describe import COLUMNS, describe_rows


def _model() -> nn.Module:
    return modnorm.Sequential(L.Embedding(7, 4), L.Linear(4, 8), L.GELU(), L.Linear(8, 7, bias=False))


def test_one_row_per_parameter_with_every_column() -> None:
    model = _model()
    rows = describe_rows(model)
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


# ---------------------------------------------------------------- describe(optimizer) and lr semantics


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)).double()


def _one_step(model: nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(32, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 10
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return [p.detach() - b for p, b in zip(model.parameters(), before)]


def test_budgets_scale_the_lr_a_3_layer_mlp_moves_a_third_of_torch_adamw() -> None:
    no_decay = _one_step(m := _mlp(), torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.0))
    same_lr = _one_step(m := _mlp(), modnorm.optimizer(m, "adamw", lr=1e-3, weight_decay=0.0, budgets=True))
    for t, s in zip(no_decay, same_lr):
        torch.testing.assert_close(s, t / 3, rtol=1e-9, atol=1e-15)
    # the documented ways to take torch's step: budgets=False, or lr × 3 (1 / budget); the decoupled
    # decay W ← W(1 − lr·budget·λ) follows the budget, so λ stays torch's
    torch_steps = _one_step(m := _mlp(), torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01))
    for opt_of in (lambda m: modnorm.optimizer(m, "adamw", lr=3e-3, weight_decay=0.01, budgets=True), lambda m: modnorm.optimizer(m, "adamw", lr=1e-3)):
        for t, s in zip(torch_steps, _one_step(m := _mlp(), opt_of(m))):
            torch.testing.assert_close(s, t, rtol=1e-9, atol=1e-15)


def test_describe_optimizer_shows_the_norm_used_the_route_and_the_effective_lr() -> None:
    model = _mlp()
    opt = modnorm.optimizer(model, "muadam", lr=1e-2, adamw_lr_ratio=0.5, budgets=True)
    rows = {r["name"]: r for r in opt.describe_rows()}
    declared = {r["name"]: r for r in describe_rows(model)}
    assert declared["4.weight"]["norm"].startswith("RowNorm") and declared["0.bias"]["norm"] == "RMS()"
    # what the optimizer really does: MuAdam on hidden matrices, its AdamW rule on the head and the biases
    assert rows["0.weight"]["route"] == "hidden" and rows["0.weight"]["norm"].startswith("Spectral(") and rows["0.weight"]["mode"] == "lmo"
    for name in ("4.weight", "0.bias", "4.bias"):
        assert rows[name]["route"] == "default" and rows[name]["norm"].startswith("Frobenius") and rows[name]["mode"] == "sharp", name
    assert rows["0.weight"]["lr"] == pytest.approx(1e-2 / 3) and rows["4.weight"]["lr"] == pytest.approx(1e-2 / 3 * 0.5)
    text = modnorm.describe(opt)
    assert text == opt.describe()
    header = text.splitlines()[1].split()
    assert header == ["name", "shape", "role", "route", "norm", "preconditioner", "momentum", "mode", "budget", "lr"]
    assert "0.003333" in text and "0.001667" in text and "lr × budget × lr_ratio × shape factor" in text.splitlines()[-1]
    assert modnorm.describe(opt, columns=["name", "lr"]).splitlines()[1].split() == ["name", "lr"]


def test_describe_optimizer_lr_includes_torch_muon_shape_factor() -> None:
    model = _mlp()
    opt = modnorm.optimizer(model, "muon", lr=0.02, adjust_lr_fn="match_rms_adamw", budgets=True)
    rows = {r["name"]: r for r in opt.describe_rows()}
    assert rows["0.weight"]["lr"] == pytest.approx(0.02 / 3 * 0.2 * math.sqrt(128))  # torch: 0.2·√max(A, B)
    assert rows["2.weight"]["lr"] == pytest.approx(0.02 / 3 * 0.2 * math.sqrt(128))
    assert rows["4.weight"]["lr"] == pytest.approx(0.02 / 3)  # head: the AdamW rule, no shape factor


def test_describe_rejects_other_optimizers_and_model_options() -> None:
    model = _mlp()
    with pytest.raises(TypeError, match="not a modnorm optimizer; pass the model"):
        modnorm.describe(torch.optim.AdamW(model.parameters()))
    with pytest.raises(ValueError, match=r"\['tree'\] apply to a model"):
        modnorm.describe(modnorm.optimizer(model, "adamw"), tree=True)
    with pytest.raises(ValueError, match="unknown columns"):
        modnorm.describe(modnorm.optimizer(model, "adamw"), columns=["colour"])


def test_optimizer_repr_says_budgets_scale_the_lr() -> None:
    last = repr(modnorm.optimizer(_mlp(), "adamw", lr=1e-3, budgets=True)).splitlines()[-1]
    assert last.startswith("note:") and "lr × budget (0.3333 here)" in last and "modnorm.describe(opt)" in last
    assert "budget (1 here)" in repr(modnorm.optimizer(_mlp(), "adamw", budgets=False)).splitlines()[-1]


# ---------------------------------------------------------------- the command line

FACTORY = """
from torch import nn

def build():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

if __name__ == "__main__":
    raise SystemExit("run as a script")
"""


def test_cli_describe_a_users_factory_by_file_and_by_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "my_net.py").write_text(FACTORY)
    assert cli.main(["describe", f"{tmp_path / 'my_net.py'}:build"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == list(COLUMNS) and "2.weight" in text and "0.5 (1/2)" in text
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_net", raising=False)
    assert cli.main(["describe", "my_net:build", "--optimizer", "adamw", "--lr", "3e-3"]) == 0
    text = capsys.readouterr().out
    assert "route" in text.splitlines()[1] and text.count(" 0.003\n") == 4  # 3e-3 × budget 1 (the default)
    with pytest.raises(SystemExit, match="defines no 'model'"):
        cli.main(["describe", "my_net"])
    with pytest.raises(SystemExit, match="cannot import 'no_such_module'"):
        cli.main(["describe", "no_such_module:build"])
    with pytest.raises(SystemExit, match="--lr needs --optimizer"):
        cli.main(["describe", "my_net:build", "--lr", "1"])
