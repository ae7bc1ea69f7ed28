"""Generate the Python protobuf and gRPC code for proto/ into service/api/.

One script produces the checked-in stubs; `--check` regenerates them in a
temporary folder and fails when the checked-in files differ (a test runs it).
Each grpc stub's absolute import (`from seqserve.v1 import ...`) is rewritten
to a relative one so the stubs live inside the `service` package. The KServe
stubs (package `inference`) are imported only by the server's KServe front
end: tritonclient defines the same symbols, and a process can hold only one.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "service" / "api"
# Each .proto and the package its stubs import each other through.
SOURCES = {
    "seqserve/v1/seqserve.proto": "seqserve.v1",
    "seqserve/kserve/inference.proto": "seqserve.kserve",
}
GENERATED = [
    f"{Path(src).stem}_pb2{suffix}" for src in SOURCES for suffix in (".py", ".pyi", "_grpc.py")
]


def generate(out: Path) -> None:
    from grpc_tools import protoc  # dev dependency, pinned in pyproject

    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *SOURCES,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out.mkdir(parents=True, exist_ok=True)
        for source, package in SOURCES.items():
            src = Path(tmp) / Path(source).parent
            absolute = rf"^from {re.escape(package)} import "
            for suffix in (".py", ".pyi", "_grpc.py"):
                name = f"{Path(source).stem}_pb2{suffix}"
                text = re.sub(absolute, "from . import ", (src / name).read_text(), flags=re.M)
                (out / name).write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if service/api is stale")
    args = parser.parse_args(argv)
    if not args.check:
        generate(OUT)
        print(f"wrote {', '.join(GENERATED)} to {OUT.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [n for n in GENERATED if not filecmp.cmp(Path(tmp) / n, OUT / n, shallow=False)]
    if stale:
        print(f"stale generated code: {stale}; run `python proto/generate.py`", file=sys.stderr)
        return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
