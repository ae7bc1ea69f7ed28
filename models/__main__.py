"""`python -m seqserve.models ...` is `seqserve train|export|compare ...`."""

from __future__ import annotations

import sys

from seqserve.models.cli import main

if __name__ == "__main__":
    sys.exit(main())
