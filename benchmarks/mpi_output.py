"""The output of ``python -m benchmarks.mpi`` (rank 0): the run as pytest-benchmark JSON, written or appended to
--output, and the summary it prints."""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import numpy as np

from benchmarks.machine import describe_storage, library_versions
from benchmarks.mpi_ranks import StoreInfo
from reports.results import SUITE
from storage_impls.registry import canonical_spec

OPERATION = "read_random"


class UsageError(ValueError):
    """A bad command line (every rank finds the same)."""


def _percentiles(seconds: np.ndarray) -> dict[str, float]:
    return {
        "batch_p50_s": float(np.percentile(seconds, 50)),
        "batch_p99_s": float(np.percentile(seconds, 99)),
        "batch_max_s": float(seconds.max()),
    }


def build_document(
    args: argparse.Namespace,
    info: StoreInfo,
    directory: Path,
    hosts: list[str],
    epochs: list[dict],
    figures: list[dict],
    expected: int,
    started: str,
    timeout: float,
) -> dict:
    """The run as pytest-benchmark JSON: machine and commit as pytest-benchmark records them, one read_random cell."""
    import mpi4py
    import pytest_benchmark
    from mpi4py import MPI
    from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info
    from pytest_benchmark.stats import Stats
    from pytest_benchmark.utils import get_commit_info

    spec, ranks, measured = canonical_spec(args.method), len(hosts), epochs[1:]
    epoch_s = [epoch["span"] for epoch in measured]  # earliest start to latest end, on rank 0's clock
    stats = Stats()
    for seconds in epoch_s:
        stats.update(seconds)
    per_rank = [
        {
            "rank": rank,
            "host": hosts[rank],
            "images": figure["images"],
            "batches": figure["batches"],
            "startup_s": figure["startup_s"],
            "clock_offset_s": figure["clock_offset_s"],
            "clock_round_trip_s": figure["clock_round_trip_s"],
            "epoch_s": [epoch["seconds"][rank] for epoch in measured],
            "median_s": statistics.median(epoch["seconds"][rank] for epoch in measured),
            "first_batch_s": statistics.median(epoch["first"][rank] for epoch in measured),
            **_percentiles(figure["batch_seconds"]),
            "ids_digests": [f"{epoch['digests'][rank]:#018x}" for epoch in epochs],
            **({"resident_fraction_before": figure["resident"]} if args.cache == "cold" else {}),
        }
        for rank, figure in enumerate(figures)
    ]
    resident = [figure["resident"] for figure in figures if figure["resident"] is not None]
    median = statistics.median(epoch_s)
    variant = f"{spec}-{info.n_images}-b{args.batch_size}-r{ranks}-{args.cache}"
    extra = {
        "suite": SUITE,
        "operation": OPERATION,
        "method": spec,
        "n_images": info.n_images,
        "image_shape": list(info.image_shape),
        "dtype": info.dtype,
        "raw_bytes": info.n_images * info.image_bytes,
        "dataset": args.dataset.name,
        "durable": False,
        "images_per_round": info.n_images,
        "images_per_s": info.n_images / median,
        "mb_per_s": info.n_images * info.image_bytes / 1e6 / median,
        "batch_size": args.batch_size,
        "workers": ranks,
        "cache": args.cache,
        "permutation_seed": args.permutation_seed,
        "n_batches": sum(figure["batches"] for figure in figures),
        "startup_s": max(figure["startup_s"] for figure in figures),
        **_percentiles(np.concatenate([figure["batch_seconds"] for figure in figures])),
        "first_batch_s": statistics.median(max(epoch["first"]) for epoch in measured),
        **({"resident_fraction_before": max(resident)} if resident else {}),
        "launcher": "mpi",
        "ranks": ranks,
        "nodes": len(set(hosts)),
        "hosts": sorted(set(hosts)),
        "rank_spread": statistics.median(max(epoch["seconds"]) / min(epoch["seconds"]) for epoch in measured),
        "store": str(directory.resolve()),
        "timeout_s": timeout,
        "warmup_epochs": 1,
        "ids_digest_expected": f"{expected:#018x}",
        "per_rank": per_rank,
    }
    bench = {
        "group": f"{OPERATION} {info.n_images} b{args.batch_size} {args.cache}",
        "name": f"mpi_read_random[{variant}]",
        "fullname": f"benchmarks/mpi.py::read_random[{variant}]",
        "param": variant,
        "params": {
            "method": spec,
            "n_images": info.n_images,
            "batch_size": args.batch_size,
            "workers": ranks,
            "cache": args.cache,
        },
        "extra_info": extra,
        "options": {"timer": "perf_counter", "warmup_rounds": 1, "rounds": args.rounds},
        "stats": {**stats.as_dict(), "data": epoch_s},
    }
    library = " ".join(
        MPI.Get_library_version().split("\n", 1)[0].split()
    )  # "MPICH Version: 5.0.2", "Open MPI v5.0.5, ..."
    machine = {
        **pytest_benchmark_generate_machine_info(),
        "storage": describe_storage(directory),
        "libraries": library_versions(),
        "mpi": {"library": library, "mpi4py": mpi4py.__version__},
    }
    return {
        "machine_info": machine,
        "commit_info": get_commit_info(),
        "benchmarks": [bench],
        "datetime": started,
        "version": pytest_benchmark.__version__,
    }


def summary(bench: dict, built: Path | None, output: Path | None) -> str:
    """What rank 0 prints at the end."""
    info = bench["extra_info"]
    lines = [
        f"{info['method']}: {info['ranks']} rank(s) on {info['nodes']} node(s), {info['n_images']:,} images of "
        f"{'x'.join(map(str, info['image_shape']))} {info['dtype']}, batch {info['batch_size']}, {info['cache']} "
        f"cache, {bench['stats']['rounds']} measured epoch(s): median {bench['stats']['median']:.4g} s, "
        f"{info['images_per_s']:,.0f} images/s, {info['mb_per_s']:,.1f} MB/s; batch p50 "
        f"{info['batch_p50_s'] * 1e3:.3g} ms, p99 {info['batch_p99_s'] * 1e3:.3g} ms; slowest/fastest rank "
        f"{info['rank_spread']:.2f}x; every id read once per epoch"
    ]
    if built is not None:
        lines.append(f"store: {built} (kept: later runs reuse it)")
    if output is not None:
        lines.append(f"wrote {output}")
    return "\n".join(lines)


def read_document(path: Path) -> dict:
    """An earlier run's JSON, for --append."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"--append: cannot read {path}: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("benchmarks"), list):
        raise UsageError(f"--append: {path} is not pytest-benchmark JSON (no 'benchmarks' list)")
    return document


def write_output(path: Path, document: dict, append: bool) -> None:
    """Write ``document``; with ``append`` and an existing file, add its cell there in place of one of the same name."""
    if append and path.exists():
        earlier, names = read_document(path), {bench["name"] for bench in document["benchmarks"]}
        kept = [
            bench for bench in earlier["benchmarks"] if not isinstance(bench, dict) or bench.get("name") not in names
        ]
        earlier["benchmarks"] = kept + document["benchmarks"]
        document = earlier
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=4), encoding="utf-8")
    os.replace(temporary, path)
