"""`python -m seqserve [serve] [flags]` is `seqserve serve [flags]`."""

from __future__ import annotations

import sys

from seqserve.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if args == ["--version"]:
        sys.exit(main(args))
    if args[:1] == ["serve"]:  # the subcommand is implied; accept it when typed anyway
        args = args[1:]
    sys.exit(main(["serve", *args]))
