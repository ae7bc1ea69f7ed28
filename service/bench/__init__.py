"""The benchmark: seqserve against floors measured in the same run (`seqserve bench`)."""

from seqserve.bench.cli import main

__all__ = ["main"]
