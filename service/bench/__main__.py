"""`python -m service.bench` == `seqserve bench`."""

from service.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
