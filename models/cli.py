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

from seqserve.models import REPOSITORY


def _train_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from seqserve.models.train import DATASETS, TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a one-step-ahead forecaster")
    p.add_argument("--data", choices=DATASETS, default=d.data)
    p.add_argument("--cell", choices=("rnn", "gru", "lstm"), default=d.cell)
    p.add_argument("--hidden", type=int, default=d.hidden_size, help="hidden size H")
    p.add_argument("--layers", type=int, default=d.num_layers, help="recurrent layers L")
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--no-residual", action="store_true", help="predict levels, not changes")
    p.add_argument("--window", type=int, default=d.window, help="training window, steps")
    p.add_argument("--burn-in", type=int, default=d.burn_in, help="unscored steps per window")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--batches-per-epoch", type=int, default=d.batches_per_epoch)
    p.add_argument("--epochs", type=int, default=d.max_epochs, help="at most this many")
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--level-shift", type=float, default=d.level_shift)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="torch intra-op threads")
    p.add_argument("--out", type=Path, help="run folder (default runs/<name>)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--name", help="model name (default <data>-<cell>)")
    p.add_argument(
        "--export", type=Path, metavar="REPOSITORY", help="also export to REPOSITORY/NAME/VERSION"
    )
    p.add_argument("--version", default="1", help="version folder when exporting")


def _export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", help="export a checkpoint to the ONNX model contract")
    p.add_argument("checkpoint", type=Path, help="checkpoint.pt (or a folder holding one)")
    p.add_argument("--repository", type=Path, default=REPOSITORY)
    p.add_argument("--name", required=True)
    p.add_argument("--version", default="1")
    p.add_argument("--tolerance", type=float, default=1e-5)


def _compare_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("compare", help="RNN vs GRU vs LSTM: size, cost, error, adding problem")
    p.add_argument("--out", type=Path, default=Path("runs/compare"))
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--adding-length", type=int, default=100, help="adding problem T")
    p.add_argument("--adding-steps", type=int, default=3000, help="optimizer steps per cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")


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

    config = TrainConfig(
        data=args.data,
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
    name = args.name or f"{config.data}-{config.cell}"
    out = args.out or Path("runs") / name
    command = "seqserve " + shlex.join(argv)
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


def _export(args: argparse.Namespace) -> int:
    version_dir = args.repository / args.name / args.version
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
            f"seqserve: {exc}; train/export/compare need `pip install 'seqserve[train]'`",
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
