"""What a core install (no extras) gives: a light ``import modnorm`` and a CLI that explains what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Makes the named top-level packages unimportable, as in an install without the [demo] extra.
BLOCKER = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _Block())
"""


def _python(code: str, *args: str, blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    prelude = BLOCKER.format(blocked=set(blocked)) if blocked else ""
    return subprocess.run([sys.executable, "-c", prelude + code, *args], env=env, capture_output=True, text=True, timeout=120)


def _printed(code: str) -> list[str]:
    """The lines ``code`` prints in a fresh interpreter (which must exit cleanly)."""
    out = _python(code)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_import_modnorm_leaves_distributed_checkpoint_unimported() -> None:
    assert _printed(
        "import sys, modnorm\n"
        "print('torch.distributed.checkpoint' in sys.modules)\n"
        "print('load_checkpoint' in dir(modnorm), modnorm.load_checkpoint.__module__)\n"
        "print('torch.distributed.checkpoint' in sys.modules)\n"
        "try:\n    modnorm.no_such_name\nexcept AttributeError as e:\n    print(e)\n"
    ) == [
        "False",
        "True modnorm.distributed.checkpoint",
        "True",
        "module 'modnorm' has no attribute 'no_such_name'",
    ]


def test_import_modnorm_defers_the_optimizer_package_until_first_use() -> None:
    assert _printed(
        "import gc, sys, modnorm\n"
        "print(sorted(m for m in ('modnorm.optim', 'pydantic') if m in sys.modules))\n"
        "print(modnorm.describe(modnorm.Sequential()).splitlines()[0].split()[0], 'modnorm.optim' in sys.modules)\n"
        "from modnorm import optimizer, ConfigError, ModnormOptimizer\n"
        "print(optimizer.__module__, ConfigError.__module__, ModnormOptimizer.__module__, gc.get_freeze_count())\n"
        "opt = modnorm.optimizer(__import__('torch').nn.Linear(3, 2), 'adamw')\n"
        "print(type(opt) is modnorm.ModnormOptimizer, 'optimizer' in dir(modnorm))\n"
    ) == [
        "[]",
        "name False",
        "modnorm.optim.factory modnorm.optim.hparams modnorm.optim.optimizer 0",
        "True True",
    ]


def test_modnorm_demo_without_the_demo_extra_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    out = _python("from modnorm.cli import main; main()", "demo", "--out", str(tmp_path), blocked=("sklearn", "matplotlib", "tqdm"))
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        'modnorm demo needs scikit-learn, matplotlib, tqdm, not installed here; install the demo extra: pip install "modnorm[demo]"'
    ]


def test_import_leaves_the_garbage_collector_as_it_found_it() -> None:
    assert _printed(
        "import gc, torch\n"
        "x = [object() for _ in range(10)]; gc.freeze(); frozen = gc.get_freeze_count()\n"
        "import modnorm\n"
        "print(gc.isenabled(), gc.get_freeze_count() > 0.9 * frozen)\n"  # the application's freeze stays (less what refcounting freed)
    ) == ["True True"]
    assert _printed("import gc, modnorm\nprint(gc.isenabled(), gc.get_freeze_count())\n") == ["True 0"]
