"""The `seqserve` command.

    seqserve serve [flags]            serve a model repository (flags or SEQSERVE_* variables)
    seqserve models [--target|--repository]   list the models of a server or a folder
    seqserve predict --model M --csv F        stream a CSV through a running server
    seqserve train|export|compare ...         the PyTorch side (needs seqserve[train])
    seqserve bench ...                        the benchmark

Heavy imports happen inside the subcommand that needs them: `serve` loads ONNX
Runtime, `train` loads torch, the others load neither.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.metadata
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from seqserve.hints import install
from seqserve.settings import ServerSettings, SettingsError

# Subcommands owned by other packages: module, whether it gets the subcommand name, help.
DELEGATED: dict[str, tuple[str, bool, str]] = {
    "train": ("seqserve.models.cli", True, "train a forecaster (PyTorch, needs seqserve[train])"),
    "export": ("seqserve.models.cli", True, "export a checkpoint to the ONNX model contract"),
    "compare": ("seqserve.models.cli", True, "compare RNN, GRU and LSTM on size, cost and error"),
    "bench": ("seqserve.bench", False, "measure the server against its floors"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqserve",
        description="Stateful streaming inference of recurrent sequence models over gRPC.",
    )
    parser.add_argument("--version", action="version", version=f"seqserve {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="serve a model repository",
        description="Serve every model in a repository folder. Each flag also reads "
        "the SEQSERVE_* variable named in its help; a flag wins over its variable.",
    )
    ServerSettings.add_arguments(serve)
    serve.set_defaults(run=_serve)

    from seqserve.client.options import add_connection_arguments  # light: the client

    models = sub.add_parser(
        "models",
        help="list the models of a running server or a folder; reload a server's repository",
        description="`seqserve models` lists what a server serves (or, with --repository, "
        "what a server started on that folder would serve). `seqserve models reload` makes "
        "a running server read its repository again now: new versions that pass the "
        "startup checks are served, removed ones take no new sessions.",
    )
    models.add_argument(
        "action", nargs="?", choices=("list", "reload", "check"), default="list",
        help="list: the models served; reload: read the repository again now; check DIR: "
        "run the server's load checks on one version folder (default: list)",
    )  # fmt: skip
    models.add_argument("folder", nargs="?", type=Path, help="check: a <name>/<version> folder")
    where = models.add_mutually_exclusive_group()
    where.add_argument(
        "--repository", type=Path,
        help="read a repository folder instead (default: ask the server at --target)",
    )  # fmt: skip
    add_connection_arguments(models, target=where)
    models.set_defaults(run=_models)

    from seqserve.client import predict  # light: the client and numpy

    pred = sub.add_parser(
        "predict",
        help="stream a CSV through a running server",
        description=predict.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_arguments(pred)
    pred.set_defaults(run=predict.run)

    for name, (_, _, summary) in DELEGATED.items():
        # Listed for --help only: main() hands these over before parsing.
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("seqserve")
    except importlib.metadata.PackageNotFoundError:  # run from sources, not installed
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        module_name, with_name, _ = DELEGATED[argv[0]]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            print(
                f"seqserve {argv[0]}: cannot import {module_name} ({exc}); "
                f"the PyTorch commands need `{install('train')}`",
                file=sys.stderr,
            )
            return 2
        code: int = module.main(argv if with_name else argv[1:])
        return code
    parser = build_parser()
    if not argv:  # what there is to do, rather than argparse's "arguments are required"
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    code = args.run(args)
    return int(code)


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = ServerSettings.from_sources(args)
    except SettingsError as exc:
        print(f"seqserve serve: {exc}", file=sys.stderr)
        return 2
    from seqserve.logs import configure

    configure(settings.log_level, settings.log_format, settings.access_log)
    from seqserve.core.heap import collect_less_often, keep_round_buffers_in_heap
    from seqserve.core.journal import StoreError
    from seqserve.core.runtime import ModelLoadError  # loads ONNX Runtime
    from seqserve.grpc.auth import TokenError
    from seqserve.grpc.server import serve
    from seqserve.grpc.tls import TlsError

    keep_round_buffers_in_heap()  # the serving process owns its allocator
    collect_less_often()  # and its collector
    try:
        return asyncio.run(serve(settings))
    except (ModelLoadError, StoreError, TokenError, TlsError, OSError) as exc:
        logging.getLogger("seqserve").error("cannot start: %s", exc)
        return 1


def _models(args: argparse.Namespace) -> int:
    if args.action == "check":
        if args.folder is None:
            print("seqserve models check: expected a version folder (<name>/<version>)",
                  file=sys.stderr)  # fmt: skip
            return 2
        return _check(args.folder)
    if args.folder is not None:
        print(f"seqserve models {args.action}: takes no folder, got {args.folder}",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.action == "reload":
        if args.repository is not None:
            print("seqserve models reload: reloads a running server (--target), not a folder",
                  file=sys.stderr)  # fmt: skip
            return 2
        return _reload(args)
    if args.repository is not None:
        return _models_in_folder(args.repository)
    from seqserve.client import SeqServeClientError
    from seqserve.client.options import client_of

    try:
        with client_of(args, timeout=10.0) as client:
            rows = []
            for entry in client.list_models():
                for version in entry.versions:
                    m = client.model_info(entry.name, version)
                    rows.append(
                        _row(
                            m.name,
                            m.version,
                            version == entry.latest,
                            m.cell,
                            m.input_size,
                            m.output_size,
                            m.hidden_size,
                            m.num_layers,
                            m.parameters,
                            m.autoregressive,
                        )
                    )
    except SeqServeClientError as exc:
        print(f"seqserve models: {args.target}: {exc}", file=sys.stderr)
        return 1
    _print_table(rows)
    return 0


def _check(folder: Path) -> int:
    """The checks the server runs on a version when it loads it, on one folder: the spec
    against its JSON Schema and the contract, the graph against the spec, a smoke run."""
    from seqserve.core.repository import ModelLoadError, VersionFolder
    from seqserve.core.runtime import load_version  # loads ONNX Runtime

    folder = folder.resolve()
    if not folder.is_dir():
        print(f"seqserve models check: {folder} is not a folder", file=sys.stderr)
        return 2
    try:
        model = load_version(VersionFolder(folder.parent.name, folder.name, folder), 1)
    except ModelLoadError as exc:
        print(f"seqserve models check: {exc}", file=sys.stderr)
        return 1
    spec = model.spec
    states = ", ".join(f"{s.input}->{s.output} {list(s.shape)}" for s in spec.states)
    print(
        f"ok: {model.label} would be served: {spec.cell}, input {spec.input_name!r} "
        f"(B, T, {spec.input_size}), output {spec.output_name!r} (B, T, {spec.output_size}), "
        f"states {states or 'none'}, autoregressive {spec.autoregressive}"
    )
    return 0


def _reload(args: argparse.Namespace) -> int:
    from seqserve.client import SeqServeClientError
    from seqserve.client.options import client_of

    try:
        with client_of(args, timeout=120.0) as client:  # loading a large graph takes a while
            report = client.reload_models()
    except SeqServeClientError as exc:
        print(f"seqserve models reload: {args.target}: {exc}", file=sys.stderr)
        return 1
    for verb, labels in (("added", report.added), ("removed", report.removed)):
        for name, version in labels:
            print(f"{verb:8} {name}/{version}")
    for name, version, reason in report.refused:
        print(f"refused  {name}/{version}: {reason}" if version else f"refused  {name}: {reason}")
    if not (report.added or report.removed or report.refused):
        print("no change")
    return 1 if report.refused else 0


def _models_in_folder(repository: Path) -> int:
    """The models a server started on `repository` would serve, read as its loader reads them."""
    from seqserve.core.repository import ModelLoadError, read_version, scan

    try:
        folders = scan(repository)
        specs = [read_version(f) for f in folders]
    except ModelLoadError as exc:
        print(f"seqserve models: {exc}", file=sys.stderr)
        return 2 if not repository.is_dir() else 1
    rows = []
    for i, (f, s) in enumerate(zip(folders, specs, strict=True)):
        latest = i + 1 == len(folders) or folders[i + 1].name != f.name
        rows.append(
            _row(
                f.name,
                f.version,
                latest,
                s.cell,
                s.input_size,
                s.output_size,
                s.hidden_size,
                s.num_layers,
                s.parameters,
                s.autoregressive,
            )
        )
    _print_table(rows)
    return 0


def _row(
    name: str,
    version: str,
    latest: bool,
    cell: str,
    inputs: int,
    outputs: int,
    hidden: int,
    layers: int,
    parameters: int,
    autoregressive: bool,
) -> dict[str, str]:
    return {
        "model": name,
        "version": version + (" (latest)" if latest else ""),
        "cell": cell,
        "in": str(inputs),
        "out": str(outputs),
        "hidden": f"{hidden}x{layers}",
        "parameters": str(parameters),
        "autoregressive": "yes" if autoregressive else "no",
    }


def _print_table(rows: list[dict[str, str]]) -> None:
    if not rows:
        print("no models")
        return
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
    print("  ".join(k.ljust(w) for k, w in widths.items()))
    for row in rows:
        print("  ".join(row[k].ljust(w) for k, w in widths.items()))
