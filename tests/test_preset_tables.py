"""The preset tables of README.md and docs/optimizer.md agree with the preset registry: every
registered preset is listed in the README, every listed name is registered, and the mode
column is the mode its recipe gives hidden matrices; the hyperparameter table is generated."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from modnorm.optim import PRESETS

ROOT = Path(__file__).resolve().parents[1]
HEADER = re.compile(r"^\| preset \| base norm")


def preset_rows(page: Path) -> list[tuple[list[str], list[str]]]:
    """(names, modes) per row of the page's preset table; a row "adamw(amsgrad=True)" names adamw."""
    lines = page.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if HEADER.match(line))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    mode_col = header.index("mode")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = [re.sub(r"\(.*\)", "", n).strip(" `") for n in cells[0].split(",")]
        modes = [m.split(":")[0].strip() for m in cells[mode_col].split("/")]
        rows.append((names, modes if len(modes) == len(names) else modes[:1] * len(names)))
    return rows


def hidden_mode(name: str) -> str:
    """The mode of the preset's rule for hidden matrices, with its default hyperparameters."""
    p = PRESETS[name]
    return p.build(p.hyperparameters.model_construct()).rule_for("hidden").mode  # no validation: kfac/sophia need a model or a loss


@pytest.mark.parametrize("page", ["README.md", "docs/optimizer.md"])
def test_listed_presets_are_registered_with_their_mode(page: str) -> None:
    rows = preset_rows(ROOT / page)
    assert rows
    for names, modes in rows:
        for name, mode in zip(names, modes):
            assert name in PRESETS, f"{page} lists {name!r}, which is not a registered preset"
            assert mode == hidden_mode(name), f"{page}: {name} is listed with mode {mode!r}, its recipe uses {hidden_mode(name)!r}"


def test_readme_lists_every_registered_preset() -> None:
    listed = {n for names, _ in preset_rows(ROOT / "README.md") for n in names}
    assert listed == set(PRESETS)


def test_hyperparameter_table_is_generated_from_the_registry() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_presets.py"), "--check"], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert done.returncode == 0, done.stderr
