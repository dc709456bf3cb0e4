"""The demo, the command line, and the docs that ship code (integrations snippet, API reference)."""

from __future__ import annotations

import json
import math
import re
import runpy
import struct
import sys
from pathlib import Path

import pytest

from modnorm import cli
from modnorm.demo import DEMO_OPTIMIZERS, load_digits_split, run_demo
from modnorm.demo.plot import demo_figure

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "tqdm", None)  # without a progress bar the demo does not need tqdm
        return out, run_demo(out, quick=True, progress=False)


def test_demo_writes_results_and_plot(demo_run: tuple[Path, dict]) -> None:
    out, _ = demo_run
    data = json.loads((out / "results.json").read_text())
    assert set(data["results"]) == set(DEMO_OPTIMIZERS)
    png = (out / "loss_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert (width, height) == (1200, 500)


def _correct(accuracy: float, n_test: int) -> int:
    """The number of correct test predictions an accuracy stands for (it must be one: k / n_test)."""
    k = round(accuracy * n_test)
    assert abs(accuracy * n_test - k) < 1e-4 and 0 <= k <= n_test, (accuracy, n_test)
    return k


def test_demo_records_test_accuracy_during_training(demo_run: tuple[Path, dict]) -> None:
    _, summary = demo_run
    n_test = len(load_digits_split(0)[3])
    for name, r in summary["results"].items():
        acc = r["accuracy_curve"]
        assert acc["step"][0] == 0 and acc["step"] == sorted(acc["step"]) and len(acc["step"]) >= 10, name
        assert acc["accuracy"][-1] == r["test_accuracy"], name
        for a in acc["accuracy"]:  # each an accuracy over the whole test split
            _correct(a, n_test)
        assert acc["accuracy"][-1] > acc["accuracy"][0], name  # it learned


def test_demo_figure_shows_every_curve_inside_its_axes(demo_run: tuple[Path, dict]) -> None:
    import matplotlib.pyplot as plt

    _, summary = demo_run
    results = summary["results"]
    results = {**results, "muadam": {**results["muadam"], "curve": {"step": [0, 1, 2], "loss": [2.0, 1e-9, float("nan")]}}}
    fig = demo_figure(results)
    try:
        loss_ax, acc_ax = fig.axes
        assert "loss" in loss_ax.get_title() and "accuracy" in acc_ax.get_title() and loss_ax.get_yscale() == "log"
        for ax in (loss_ax, acc_ax):
            lines = ax.get_lines()
            assert [ln.get_label().split()[0] for ln in lines] == list(results)
            assert len({(ln.get_linestyle(), ln.get_marker()) for ln in lines}) == len(lines)  # coinciding curves stay visible
            lo, hi = ax.get_ylim()
            for ln in lines:
                ys = [y for y in ln.get_ydata() if math.isfinite(y)]
                assert lo <= min(ys) and max(ys) <= hi, (ax.get_title(), ln.get_label())
    finally:
        plt.close(fig)


def test_demo_without_its_extra_stops_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--quick", "--no-progress", "--out", str(tmp_path / "out")])
    message = str(exit_info.value.code)
    assert "\n" not in message and "scikit-learn" in message and 'pip install "modnorm[demo]"' in message
    assert "tqdm" not in message and not (tmp_path / "out").exists()


def test_demo_losses_decrease(demo_run: tuple[Path, dict]) -> None:
    _, summary = demo_run
    for name, r in summary["results"].items():
        curve = r["curve"]["loss"]
        assert all(math.isfinite(v) for v in curve), name
        assert r["final_train_loss"] < curve[0], (name, curve[0], r["final_train_loss"])
        assert _correct(r["test_accuracy"], len(load_digits_split(0)[3])) > 0 and r["seconds"] > 0


def test_demo_torch_and_modnorm_adamw_both_learn(demo_run: tuple[Path, dict]) -> None:
    _, summary = demo_run
    for name in ("torch:adamw", "adamw"):
        assert summary["results"][name]["test_accuracy"] > 0.5, name


def test_cli_describe_prints_geometry(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["describe"]) == 0
    text = capsys.readouterr().out
    for name in ("0.weight", "2.weight", "4.weight"):
        assert name in text


def test_cli_bench_unknown_name_lists_available() -> None:
    with pytest.raises(SystemExit, match="available: .*matrix_quadratic"):
        cli.main(["bench", "no_such_benchmark"])


def test_cli_bench_outside_a_checkout_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_folder() -> Path:
        raise FileNotFoundError("modnorm bench: no benchmarks/ folder found")

    monkeypatch.setattr(cli, "benchmark_dir", no_folder)
    with pytest.raises(SystemExit, match="no benchmarks/ folder found"):
        cli.main(["bench", "char_gpt"])


def test_cli_rejects_stray_arguments() -> None:
    with pytest.raises(SystemExit):
        cli.main(["demo", "--bogus"])


def test_python_m_modnorm_entry_point(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["modnorm", "describe"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("modnorm", run_name="__main__")
    assert exit_info.value.code == 0
    assert "0.weight" in capsys.readouterr().out


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_integrations_plain_pytorch_snippet_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = _python_blocks((ROOT / "docs" / "integrations.md").read_text())
    plain = [b for b in blocks if b.startswith("# plain-pytorch")]
    assert len(plain) == 1
    exec(compile(plain[0], "integrations.md", "exec"), {"__name__": "snippet"})
    final = float(capsys.readouterr().out.split()[-1])
    assert final < math.log(3)  # below the loss of a uniform guess over 3 classes


def test_integrations_framework_snippets_are_valid_python() -> None:
    blocks = _python_blocks((ROOT / "docs" / "integrations.md").read_text())
    text = "\n".join(blocks)
    assert "optimizers=(opt, sched)" in text and "def configure_optimizers" in text
    for block in blocks:
        compile(block, "integrations.md", "exec")


def test_api_reference_regenerates_cleanly() -> None:
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_api
    finally:
        sys.path.remove(str(ROOT / "docs"))
    import modnorm

    text = gen_api.render()
    assert text == gen_api.render()  # deterministic
    assert " at 0x" not in text
    headings = set(re.findall(r"^### `(\w+)", text, flags=re.M))
    assert headings == set(modnorm.__all__)
    committed = set(re.findall(r"^### `(\w+)", (ROOT / "docs" / "api.md").read_text(), flags=re.M))
    assert committed == set(modnorm.__all__), "docs/api.md is out of date: run python docs/gen_api.py"


def test_demo_adamw_at_three_times_the_lr_takes_torch_adamw_steps(demo_run: tuple[Path, dict]) -> None:
    _, summary = demo_run
    ours, torchs = summary["results"]["adamw"], summary["results"]["torch:adamw"]
    assert ours["curve"]["loss"] == pytest.approx(torchs["curve"]["loss"], rel=1e-4)
    assert ours["test_accuracy"] == pytest.approx(torchs["test_accuracy"], abs=1 / 360)


def test_train_steps_stops_on_a_refused_gradient() -> None:
    """A non-finite gradient under a finite loss: the modnorm optimizer refuses the step and the
    training loop records the divergence (nan) instead of raising — a sweep continues with the
    next run — and the parameters keep their last finite values."""
    import torch

    from modnorm.demo.training import make_optimizer, train_steps

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = make_optimizer("adamw", model, lr=0.1)
    x = torch.randn(8, 3)
    blow_up_at = 3

    def loss_fn(step: int) -> torch.Tensor:
        out = model(x)
        if step == blow_up_at:
            out.register_hook(lambda g: g * float("inf"))
        return out.square().mean()

    xs, ys, _ = train_steps(model, opt, loss_fn, steps=10)
    assert xs[-1] == blow_up_at and math.isnan(ys[-1]) and all(math.isfinite(y) for y in ys[:-1])
    assert len(xs) == blow_up_at + 2  # every step recorded, plus the refused one's nan
    assert all(torch.isfinite(p).all() for p in model.parameters())
