"""Import-level checks that the public API is present."""

import modnorm


def test_public_api_importable() -> None:
    for name in modnorm.__all__:
        assert hasattr(modnorm, name), name
