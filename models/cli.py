"""`seqserve train|export|compare` (also `python -m seqserve.models ...`).

seqserve train --cell lstm --out runs/co2-lstm --export models/repository --name co2-lstm
seqserve export runs/co2-lstm/checkpoint.pt --repository models/repository --name co2-lstm
seqserve compare --out runs/compare
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from seqserve.helpfmt import DefaultsFormatter
from seqserve.hints import install
from seqserve.models import REPOSITORY


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _pair(text: str) -> tuple[str, str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected two values A,B, got {text!r}")
    return parts[0], parts[1]


FORMATTER = DefaultsFormatter  # every option's help ends with its default


def _train_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from seqserve.models.train import DATASETS, TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train a one-step-ahead forecaster",
        description="Train a one-step-ahead forecaster on a built-in series (--data) or on "
        "your own CSV (--csv), write a checkpoint, metrics and plots, and optionally export "
        "it for serving.",
        formatter_class=FORMATTER,
    )
    data = p.add_argument_group("data")
    data.add_argument("--data", choices=DATASETS, default=d.data, help="built-in series")
    data.add_argument(
        "--csv", type=Path,
        help="train on this CSV (with a header row) instead of --data (default: --data)",
    )  # fmt: skip
    data.add_argument(
        "--features", type=_names, default=(),
        help="comma-separated input columns (default: every numeric column but --time-column)",
    )  # fmt: skip
    data.add_argument(
        "--targets", type=_names, default=(),
        help="comma-separated columns to forecast one step ahead (default: the features, "
        "an autoregressive model that Forecast can roll forward)",
    )  # fmt: skip
    data.add_argument(
        "--time-column", default="",
        help="column of times or dates: rows are sorted by it and gaps filled (default: "
        "the rows' order)",
    )  # fmt: skip
    data.add_argument(
        "--split", type=_pair, default=f"{d.val_fraction},{d.test_fraction}",
        metavar="VAL,TEST", help="fractions of the series, at its end, for validation and test",
    )  # fmt: skip
    data.add_argument(
        "--split-times", type=_pair, default=None, metavar="VAL_START,TEST_START",
        help="where validation and test begin, as times of --time-column (e.g. dates); "
        "replaces --split (default: by --split)",
    )  # fmt: skip
    net = p.add_argument_group("network")
    net.add_argument("--cell", choices=("rnn", "gru", "lstm"), default=d.cell, help="cell")
    net.add_argument("--hidden", type=int, default=d.hidden_size, help="hidden size H")
    net.add_argument("--layers", type=int, default=d.num_layers, help="recurrent layers L")
    net.add_argument("--dropout", type=float, default=d.dropout, help="between layers")
    net.add_argument(
        "--no-residual", action="store_true",
        help="predict levels, not changes (changes need targets == features)",
    )  # fmt: skip
    fit = p.add_argument_group("training")
    fit.add_argument("--window", type=int, default=d.window, help="training window, steps")
    fit.add_argument("--burn-in", type=int, default=d.burn_in, help="unscored steps per window")
    fit.add_argument("--batch-size", type=int, default=d.batch_size, help="windows per batch")
    fit.add_argument(
        "--batches-per-epoch", type=int, default=d.batches_per_epoch, help="batches per epoch"
    )
    fit.add_argument("--epochs", type=int, default=d.max_epochs, help="at most this many")
    fit.add_argument("--patience", type=int, default=d.patience, help="early stopping, epochs")
    fit.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    fit.add_argument(
        "--level-shift", type=float, default=d.level_shift,
        help="augmentation: random level shifts, in input stds (autoregressive models only)",
    )  # fmt: skip
    fit.add_argument("--seed", type=int, default=d.seed, help="random seed")
    fit.add_argument("--threads", type=int, default=d.threads, help="torch intra-op threads")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, help="run folder (default: runs/<name>)")
    out.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    out.add_argument("--name", help="model name (default: <data or CSV name>-<cell>)")
    out.add_argument(
        "--export", type=Path, metavar="REPOSITORY",
        help="also export to REPOSITORY/NAME/VERSION (default: not exported)",
    )  # fmt: skip
    out.add_argument("--version", default="1", help="version folder when exporting")
    out.add_argument("--force", action="store_true", help="replace an existing exported version")


def _export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint to the ONNX model contract", formatter_class=FORMATTER
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint.pt (or a folder holding one)")
    p.add_argument("--repository", type=Path, default=REPOSITORY, help="model repository")
    p.add_argument("--name", required=True, help="model name (a folder of the repository)")
    p.add_argument("--version", default="1", help="version folder")
    p.add_argument(
        "--tolerance", type=float, default=1e-5, help="largest ONNX vs PyTorch difference"
    )
    p.add_argument("--force", action="store_true", help="replace an existing version")


def _compare_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "compare",
        help="RNN vs GRU vs LSTM: size, cost, error, adding problem",
        formatter_class=FORMATTER,
    )
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder")
    p.add_argument("--hidden", type=int, default=32, help="hidden size of every cell")
    p.add_argument("--adding-length", type=int, default=100, help="adding problem T")
    p.add_argument("--adding-steps", type=int, default=3000, help="optimizer steps per cell")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _free(version_dir: Path, force: bool) -> None:
    """Refuse to write over an exported version unless told to: a served version is
    immutable (a reload keeps the loaded one and warns)."""
    if version_dir.exists() and any(version_dir.iterdir()) and not force:
        raise ValueError(
            f"{version_dir} already holds a version; export to a new --version, or pass "
            "--force to replace it"
        )


def export_checkpoint(
    checkpoint_path: Path,
    version_dir: Path,
    *,
    tolerance: float = 1e-5,
    extra_files: tuple[Path, ...] = (),
) -> None:
    """Export a checkpoint to version_dir; the checkpoint (and extra files) go beside it."""
    from seqserve.models import checkpoint
    from seqserve.models.checkpoint import CHECKPOINT_FILE
    from seqserve.models.export import export_model

    ckpt = checkpoint.read(checkpoint_path)
    export_model(
        ckpt.module,
        version_dir,
        autoregressive=ckpt.autoregressive,
        training=ckpt.provenance,
        tolerance=tolerance,
    )
    source = checkpoint_path if checkpoint_path.is_file() else checkpoint_path / CHECKPOINT_FILE
    copies = [(source, version_dir / CHECKPOINT_FILE)]
    copies += [(path, version_dir / path.name) for path in extra_files]
    for src, dst in copies:
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    from seqserve.models.train import TrainConfig, save_outputs, train

    if args.csv is not None and not args.csv.is_file():
        raise ValueError(f"--csv: expected a CSV file, got {str(args.csv)!r} (not a file)")
    config = TrainConfig(
        data="csv" if args.csv is not None else args.data,
        csv=str(args.csv or ""),
        features=args.features,
        targets=args.targets,
        time_column=args.time_column,
        val_fraction=float(args.split[0]),
        test_fraction=float(args.split[1]),
        split_times=tuple(args.split_times or ()),
        cell=args.cell,
        hidden_size=args.hidden,
        num_layers=args.layers,
        dropout=args.dropout,
        residual=not args.no_residual,
        window=args.window,
        burn_in=args.burn_in,
        batch_size=args.batch_size,
        batches_per_epoch=args.batches_per_epoch,
        max_epochs=args.epochs,
        patience=args.patience,
        lr=args.lr,
        level_shift=args.level_shift,
        seed=args.seed,
        threads=args.threads,
    )
    name = args.name or f"{args.csv.stem if args.csv else config.data}-{config.cell}"
    out = args.out or Path("runs") / name
    if args.export is not None:  # before training, not after it
        _free(args.export / name / args.version, args.force)
    command = "seqserve " + shlex.join(argv)
    if config.data == "csv":
        print(describe_csv(config))
    result = train(config, progress=not args.quiet, command=command)
    paths = save_outputs(result, out, plots=not args.no_plots)
    m = result.metrics
    print(
        f"{name}: test MAE {m['test_mae']:.4f} vs {m['baseline']} {m['baseline_mae']:.4f} "
        f"({'beats' if m['beats_baseline'] else 'does NOT beat'} it); "
        f"best epoch {m['best_epoch']}/{m['epochs']}, {m['seconds']} s"
    )
    for kind, path in paths.items():
        print(f"  {kind}: {path}")
    if args.export is not None:
        version_dir = args.export / name / args.version
        export_checkpoint(paths["checkpoint"], version_dir, extra_files=(paths["metrics"],))
        print(f"  exported: {version_dir}")
    return 0


def describe_csv(config: Any) -> str:
    """One line on what a CSV became: steps, sorting, gaps filled, targets never scored."""
    from seqserve.models.train import load_series

    series = load_series(config)
    n = series.notes
    parts = [f"{Path(config.csv).name}: {n['steps']} steps from {n['rows']} rows"]
    if not n["sorted_by_time"]:
        parts.append(f"sorted by {n['time_column']}")
    if n["inserted_for_gaps"]:
        parts.append(f"{n['inserted_for_gaps']} inserted for {n['time_gaps']} gap(s)")
    parts.append(
        f"features {n['features']} -> targets {n['targets']}; {n['missing']} step(s) with a "
        "missing target, filled as inputs and never scored"
    )
    return ", ".join(parts)


def _export(args: argparse.Namespace) -> int:
    version_dir = args.repository / args.name / args.version
    _free(version_dir, args.force)
    export_checkpoint(args.checkpoint, version_dir, tolerance=args.tolerance)
    print(f"exported: {version_dir}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from seqserve.models.compare import CompareConfig, run_comparison

    config = CompareConfig(
        hidden_size=args.hidden,
        adding_length=args.adding_length,
        adding_steps=args.adding_steps,
        seed=args.seed,
    )
    report = run_comparison(config, progress=not args.quiet)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "compare.md").write_text(report["markdown"])
    from seqserve.models.compare import MEAN_PREDICTOR_MSE
    from seqserve.models.plots import adding_curves

    png = adding_curves(report["adding"], MEAN_PREDICTOR_MSE, args.out / "adding.png")
    print(report["markdown"])
    print(f"written: {args.out / 'compare.json'}, {args.out / 'compare.md'}, {png}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqserve", description="Train, export and compare recurrent forecasters."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _export_parser(sub)
    _compare_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()  # imports torch for the training defaults
    except ModuleNotFoundError as exc:
        print(
            f"seqserve: {exc}; train/export/compare need `{install('train')}`",
            file=sys.stderr,
        )
        return 2
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return _train(args, argv)
        if args.command == "export":
            return _export(args)
        return _compare(args)
    except ValueError as exc:  # ExportError, CheckpointError, bad settings: say what and stop
        print(f"seqserve {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
