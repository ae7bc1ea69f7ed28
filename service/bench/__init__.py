"""The benchmark: seqserve against floors measured in the same run (`seqserve bench`)."""

from service.bench.cli import main

__all__ = ["main"]
