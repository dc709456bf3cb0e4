"""Every python block of README.md and docs/*.md runs as written.

Blocks of a page run in order in one namespace (a page may build on its earlier
blocks), in a temporary working directory. A block preceded by an HTML comment
``<!-- skip: REASON -->`` is only compiled; REASON must say what it needs that a
single CPU process without optional frameworks lacks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

BLOCK = re.compile(r"(?:<!--\s*skip:\s*(?P<reason>[^>]*?)\s*-->\s*\n)?```python\n(?P<code>.*?)```", re.S)
SKIP_REASONS = ("needs several processes", "needs the optional framework")


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line number, code, skip reason or None) of every ```python block, in order."""
    return [(text.count("\n", 0, m.start("code")) + 1, m.group("code"), m.group("reason")) for m in BLOCK.finditer(text)]


def _with_blocks() -> list[Path]:
    return [p for p in PAGES if python_blocks(p.read_text())]


def test_block_extraction() -> None:
    text = "intro\n```python\na = 1\n```\n<!-- skip: needs several processes -->\n```python\nb = 2\n```\n```bash\nc\n```\n"
    assert python_blocks(text) == [(3, "a = 1\n", None), (7, "b = 2\n", "needs several processes")]


@pytest.mark.parametrize("page", _with_blocks(), ids=lambda p: p.name)
def test_page_runs_as_written(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and CI's cores are shared
    try:
        namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
        for line, code, reason in python_blocks(page.read_text()):
            compiled = compile(code, f"{page.relative_to(ROOT)}:{line}", "exec")
            if reason is not None:
                assert reason.startswith(SKIP_REASONS), f"{page.name}:{line}: skip reason {reason!r} must start with one of {SKIP_REASONS}"
                continue
            exec(compiled, namespace)
    finally:
        torch.set_num_threads(threads)


def test_skip_markers_precede_python_blocks() -> None:
    for page in PAGES:
        text = page.read_text()
        markers = len(re.findall(r"<!--\s*skip:", text))
        assert markers == sum(reason is not None for _, _, reason in python_blocks(text)), page.name


def test_docs_are_self_contained() -> None:
    """No reference to design notes, section numbers of other documents, branches or folders outside the repository."""
    for page in PAGES:
        text = page.read_text()
        for pattern in (r"DESIGN", r"§", r"\bbranch `", r"\.\./shared", r"[Bb]ranch \w+'s"):
            assert not re.search(pattern, text), f"{page.name}: {pattern!r} at {re.search(pattern, text).group(0)!r}"


def test_readme_quick_start_prints_what_the_optimizer_does(capsys: pytest.CaptureFixture[str]) -> None:
    _, code, _ = python_blocks((ROOT / "README.md").read_text())[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, "README.md quick start", "exec"), {"__name__": "readme"})
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ModnormOptimizer(preset='muadam')" and lines[1].split()[3:4] == ["route"] and lines[1].split()[-1] == "lr"
    rows = {ln.split()[0]: ln.split() for ln in lines[3:9]}
    assert rows["0.weight"][3] == "hidden" and rows["4.weight"][3] == "default"  # the head goes to muadam's AdamW rule
    assert all(r[-1] == "0.003" for r in rows.values())  # lr 3e-3 × budget 1 (the default)
    assert "lr × budget" in lines[9]
