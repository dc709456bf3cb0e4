"""Counting calls to torch functions in a test (e.g. torch's fused optimizer kernels), so that a
comparison meant to exercise them cannot pass without them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch


def count_calls(monkeypatch: pytest.MonkeyPatch, names: Iterable[str]) -> dict[str, int]:
    """Replace each ``torch.<name>`` by a wrapper that counts its calls; returns the live counts."""
    names = tuple(names)
    calls = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(torch, name)

        def counted(*args: Any, _real: Callable = real, _name: str = name, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(torch, name, counted)
    return calls
