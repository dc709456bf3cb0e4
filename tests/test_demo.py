"""The demo, the command line, and the docs that ship code (integrations snippet, API reference)."""

from __future__ import annotations

import json
import math
import re
import runpy
import sys
from pathlib import Path

import pytest

from modnorm import cli
from modnorm.demo import DEMO_OPTIMIZERS, run_demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, quick=True, progress=False)


def test_demo_writes_results_and_plot(demo_run: tuple[Path, dict]) -> None:
    out, _ = demo_run
    data = json.loads((out / "results.json").read_text())
    assert set(data["results"]) == set(DEMO_OPTIMIZERS)
    png = (out / "loss_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_demo_losses_decrease(demo_run: tuple[Path, dict]) -> None:
    _, summary = demo_run
    for name, r in summary["results"].items():
        curve = r["curve"]["loss"]
        assert all(math.isfinite(v) for v in curve), name
        assert r["final_train_loss"] < curve[0], (name, curve[0], r["final_train_loss"])
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["seconds"] > 0


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
