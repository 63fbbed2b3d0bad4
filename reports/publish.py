"""`python -m reports publish [--check]`: the tables of README.md and docs/*.md regenerated from the runs kept in the
repository.

A generated block is delimited by markers naming its shaper (reports.shapers.SHAPERS) and its runs, paths relative to
the repository root, several separated by commas::

    <!-- table: workloads run=docs/runs/default.json,docs/runs/cold.json -->
    ...written by this command: where the run comes from, then the table...
    <!-- /table -->

A run is a suite run (pytest-benchmark JSON, kept with ``--keep``) or, for the ``figure`` shaper, a script's saved
figure (reports.figures). Each names its commit, machine, date and the command that made it (``machine_info.command``),
and the block's first line says them.

``publish`` rewrites every block from its runs; ``publish --check`` writes nothing and exits 1 listing the blocks
whose text differs from what their runs give (tests/test_published.py runs it); ``publish --keep RUN KEPT`` first copies
a run into the repository without its per-round timings; ``publish --commands`` prints, per kept run, the commands
that remake it and the blocks it feeds. Everything outside the markers is left as it is.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path

from reports.figures import Figure, load_figure
from reports.markdown import markdown_table
from reports.results import ReportInputError, Run, load_run, without_rounds
from reports.shapers import FIGURE_SHAPERS, SHAPERS

BLOCK = re.compile(
    r"^<!-- table: (?P<name>\S+) run=(?P<runs>\S+) -->\n(?P<body>.*?)^<!-- /table -->$", re.MULTILINE | re.DOTALL
)
OPENING = re.compile(r"^<!-- table:", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)  # a fenced code block: markers in it are examples


@dataclass(frozen=True)
class Block:
    """One generated block of a document: its shaper, its runs and the text between its markers."""

    document: Path
    line: int
    name: str
    runs: tuple[str, ...]
    start: int  # offsets of the body in the document's text
    end: int

    def __str__(self) -> str:
        return f"{self.document}:{self.line}: table {self.name} from {', '.join(self.runs)}"


def documents(root: Path) -> list[Path]:
    """README.md and docs/*.md under the repository root."""
    return [path for path in (root / "README.md", *sorted((root / "docs").glob("*.md"))) if path.is_file()]


def find_blocks(document: Path, text: str) -> list[Block]:
    """The generated blocks of one document, outside fenced code blocks; an opening marker without its closing one is
    an error."""
    text = FENCE.sub(lambda fence: re.sub(r"[^\n]", " ", fence.group()), text)  # same offsets, no markers
    blocks = [
        Block(
            document=document,
            line=text.count("\n", 0, match.start()) + 1,
            name=match["name"],
            runs=tuple(match["runs"].split(",")),
            start=match.start("body"),
            end=match.end("body"),
        )
        for match in BLOCK.finditer(text)
    ]
    if len(blocks) != len(OPENING.findall(text)):
        raise ReportInputError(document, "a `<!-- table: NAME run=PATHS -->` marker has no `<!-- /table -->` after it")
    return blocks


def describe(run: Run | Figure, path: str) -> str:
    """Where a published run comes from: its file, commit, machine, date and the command that made it."""
    commit = run.commit_info
    machine = run.machine_info
    cpu = machine.get("cpu", {})
    storage = machine.get("storage", {})
    dirty = " with uncommitted changes" if commit.get("dirty") else ""
    return (
        f"`{path}`: commit `{str(commit.get('id', '?'))[:7]}`{dirty}, machine `{machine.get('node', '?')}` "
        f"({cpu.get('brand_raw', '?')} × {cpu.get('count', '?')}, {storage.get('filesystem', '?')}), "
        f"{run.started.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        + (f"made by `{machine['command']}`" if machine.get("command") else "command not recorded")
    )


def load_source(block: Block, root: Path, path: str) -> Run | Figure:
    """One run a block names: a script's saved figure for the figure shapers, else a suite run."""
    return load_figure(root / path) if block.name in FIGURE_SHAPERS else load_run(root / path)


def render(block: Block, root: Path) -> str:
    """The text a block should hold: the runs it comes from, then its table."""
    shaper = SHAPERS.get(block.name)
    if shaper is None:
        known = ", ".join(SHAPERS)
        raise ReportInputError(block.document, f"line {block.line}: no table named {block.name!r} (known: {known})")
    runs = [load_source(block, root, path) for path in block.runs]
    table = shaper(runs)
    if not table.rows:
        raise ReportInputError(
            block.document, f"line {block.line}: table {block.name} finds nothing to show in its runs"
        )
    sources = "; ".join(describe(run, path) for run, path in zip(runs, block.runs))
    return f"Generated by `python -m reports publish` from {sources}.\n\n{markdown_table(*table)}\n\n"


def publish(root: Path, check: bool) -> list[Block]:
    """Regenerate every block under root; the stale ones (those whose text changed) are returned, and written unless
    ``check``. Every block is rendered before anything is written, so bad input leaves every document as it was."""
    stale, rewritten = [], {}
    for document in documents(root):
        text = document.read_text(encoding="utf-8")
        pieces, last = [], 0
        for block in find_blocks(document.relative_to(root), text):
            fresh = render(block, root)
            if text[block.start : block.end] != fresh:
                stale.append(block)
            pieces += [text[last : block.start], fresh]
            last = block.end
        new = "".join(pieces) + text[last:]
        if new != text:
            rewritten[document] = new
    if not check:
        for document, text in rewritten.items():
            document.write_text(text, encoding="utf-8")
    return stale


def remaking(run: Run | Figure, kept: str) -> list[str]:
    """The commands that remake a kept run: its own, then for a suite run the ``--keep`` that copies its JSON."""
    command = run.machine_info.get("command")
    if not command:
        return [f"(not recorded: re-run the command that made it with --benchmark-json RUN.json, then keep {kept})"]
    if isinstance(run, Figure):
        return [command]
    words = shlex.split(command)
    saved = next((word.split("=", 1)[1] for word in words if word.startswith("--benchmark-json=")), None)
    if "--benchmark-json" in words[:-1]:
        saved = words[words.index("--benchmark-json") + 1]
    return [command, f"python -m reports publish --keep {shlex.quote(saved or 'RUN.json')} {kept}"]


def commands(root: Path) -> str:
    """Per kept run under docs/runs/ (and any other a block names): the commands that remake it and its blocks."""
    feeds: dict[str, list[Block]] = {
        path.relative_to(root).as_posix(): [] for path in (root / "docs" / "runs").glob("*.json")
    }
    for document in documents(root):
        for block in find_blocks(document.relative_to(root), document.read_text(encoding="utf-8")):
            for path in block.runs:
                feeds.setdefault(path, []).append(block)
    lines = []
    for path in sorted(feeds):
        blocks = feeds[path]
        figure = bool(blocks) and all(block.name in FIGURE_SHAPERS for block in blocks)
        run = load_figure(root / path) if figure else load_run(root / path)
        lines.append(
            f"# {path}: feeds " + (", ".join(f"{b.document}:{b.line} ({b.name})" for b in blocks) or "no block")
        )
        lines += remaking(run, path)
        lines.append("")
    return "\n".join(lines) + "python -m reports publish\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="storage-report publish",
        description="Regenerate the tables between `<!-- table: NAME run=PATHS -->` and `<!-- /table -->` in "
        "README.md and docs/*.md from the runs they name.",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 listing the blocks that differ from their runs"
    )
    parser.add_argument(
        "--keep",
        nargs=2,
        type=Path,
        metavar=("RUN", "KEPT"),
        help="first copy RUN (pytest-benchmark JSON) to KEPT (such as docs/runs/default.json) without its per-round "
        "timings, then publish",
    )
    parser.add_argument(
        "--commands",
        action="store_true",
        help="print, for each kept run, the commands that remake it and the blocks it feeds; write nothing",
    )
    parser.add_argument(
        "--root", type=Path, default=Path("."), help="the repository root (default: the current folder)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command: 0 when every block is (now) up to date, 1 with --check and stale blocks, 2 for bad input."""
    args = build_parser().parse_args(argv)
    try:
        if args.commands:
            print(commands(args.root), end="")
            return 0
        if args.keep:
            source, kept = args.keep
            document = without_rounds(source)
            kept.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        stale = publish(args.root, args.check)
    except ReportInputError as err:
        print(f"storage-report publish: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"storage-report publish: error: {err.filename}: {err.strerror or err}", file=sys.stderr)
        return 2
    verb = "differs from its run" if args.check else "rewritten"
    for block in stale:
        print(f"{block}: {verb}")
    if args.check and stale:
        print(f"{len(stale)} stale table(s): run `python -m reports publish` and commit the result", file=sys.stderr)
        return 1
    return 0
