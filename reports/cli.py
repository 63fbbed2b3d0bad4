"""`python -m reports` / `storage-report`: charts and report.md from pytest-benchmark JSON runs.

`python -m reports compare BASE HEAD` is handed to reports.compare, `python -m reports history RUNS...` to
reports.history, `python -m reports publish` (the tables of README.md and docs/) to reports.publish.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from reports.results import ReportInputError, load_run, resolve_inputs
from reports.shape import DISK_KINDS, SPREADS, describe_missing, shape


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="storage-report",
        description="Write charts (PNG and SVG) and report.md from image-storage benchmark runs. "
        "Several runs (other machines or commits) are drawn together and compared with the first. "
        "`storage-report compare BASE HEAD` checks for regressions instead.",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="RUN",
        help="pytest-benchmark JSON file, directory (all *.json in it), glob, or run id such as 0003; "
        "default: the latest run in --benchmarks-dir",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("reports/out"), help="folder to write into (default: %(default)s)"
    )
    parser.add_argument(
        "--benchmarks-dir",
        type=Path,
        default=Path(".benchmarks"),
        help="where autosaved runs are looked up (default: %(default)s)",
    )
    parser.add_argument(
        "--disk",
        choices=DISK_KINDS,
        default="allocated",
        help="disk usage to chart: allocated blocks (du) or apparent size (du --apparent-size); default: %(default)s",
    )
    parser.add_argument(
        "--spread",
        choices=sorted(SPREADS),
        default="iqr",
        help="error bars: iqr (q1..q3) or range (min..max); default: %(default)s",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (2 for bad input, with a one-line message on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        from reports import compare

        return compare.main(argv[1:])
    if argv[:1] == ["history"]:
        from reports import history

        return history.main(argv[1:])
    if argv[:1] == ["publish"]:
        from reports import publish

        return publish.main(argv[1:])
    args = build_parser().parse_args(argv)
    # drawing is imported late so that bad input is reported without waiting for matplotlib
    try:
        runs = [load_run(path) for path in resolve_inputs(args.inputs, args.benchmarks_dir)]
    except ReportInputError as err:
        print(f"storage-report: error: {err}", file=sys.stderr)
        return 2
    shaped = shape(runs, spread=args.spread, disk_kind=args.disk)
    for run, missing in zip(runs, shaped.missing):
        if missing:
            print(
                f"storage-report: warning: {run.path}: missing {len(missing)} cells of the full grid: "
                f"{describe_missing(missing)}",
                file=sys.stderr,
            )
    from reports.codecs import codec_section, codec_views, write_codec_charts
    from reports.draw import write_charts
    from reports.html import report_page
    from reports.loaders import loader_points, loader_section, write_loader_charts
    from reports.markdown import write_report
    from reports.remote import remote_points, remote_section, write_remote_charts
    from reports.training import training_points, training_section, write_training_charts

    points = training_points(runs)
    loaders = loader_points(runs)
    remote = remote_points(runs)
    views = codec_views(runs, args.disk)
    try:
        charts = write_charts(shaped, args.out)
        training_charts = write_training_charts(points, shaped.labels, args.out)
        codec_charts = write_codec_charts(views, shaped.labels, args.out)
        loader_charts = write_loader_charts(loaders, shaped.labels, args.out)
        remote_charts = write_remote_charts(remote, shaped.labels, args.out)
        report = write_report(
            shaped,
            charts,
            args.out,
            [
                training_section(points, shaped.labels, training_charts),
                loader_section(loaders, shaped.labels, loader_charts),
                remote_section(remote, shaped.labels, remote_charts),
                codec_section(views, shaped.labels, codec_charts),
            ],
        )
        report.with_suffix(".html").write_text(report_page(report), encoding="utf-8")
    except OSError as err:
        print(f"storage-report: error: cannot write to {args.out}: {err.strerror or err}", file=sys.stderr)
        return 2
    drawn = len(charts) + len(training_charts) + len(loader_charts) + len(remote_charts) + len(codec_charts)
    print(f"wrote {report}, report.html and {2 * drawn} chart files")
    return 0
