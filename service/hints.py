"""Install hints that are right where they are read: a clone, or an installed package."""

from __future__ import annotations

from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def install(extra: str) -> str:
    """The pip command that adds an extra: `pip install -e '.[x]'` in a clone of the
    repository (the package runs from its sources), `pip install 'seqserve[x]'` otherwise."""
    if (_SOURCE_ROOT / "pyproject.toml").is_file() and (_SOURCE_ROOT / "service").is_dir():
        return f"pip install -e '.[{extra}]' (in {_SOURCE_ROOT})"
    return f"pip install 'seqserve[{extra}]'"
