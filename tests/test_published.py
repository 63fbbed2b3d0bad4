"""The published tables: every generated block of README.md and docs/*.md is what its saved run gives
(`python -m reports publish --check`), no table of measurements is written by hand, and the command finds, rewrites
and refuses blocks, prints the commands of kept runs and reads scripts' saved figures as documented."""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from reports.cli import main
from reports.figures import figure_document, load_figure
from reports.publish import FENCE, documents
from reports.results import load_run
from reports.shapers import FIGURE_SHAPERS, SHAPERS

ROOT = Path(__file__).resolve().parent.parent
RUN = Path(__file__).parent / "data" / "run-full.json"
FIXTURES = ("run-training-small.json", "run-loaders-tiny.json")  # shuffled epochs; loader cells


def test_published_tables_match_their_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["publish", "--check", "--root", str(ROOT)])
    assert code == 0, capsys.readouterr().out + "\nrun `python -m reports publish` and commit the result"


# Tables that describe (options, layouts, rules) rather than measure: by their header line.
DESCRIPTIVE = {
    "README.md": (
        "| | `disk` | `lmdb` | `hdf5` |",
        "| method | what | install |",
        "| method | another tool reads | before `compact()` | after `compact()` |",
        "| option | environment variable | default | |",
        "| path | what |",
    ),
    "docs/benchmarks.md": (
        "| cell | timed | untimed setup (every round) | check after the rounds |",
        "| floor | timed | untimed setup | check after the rounds |",
        "| cell | floor |",
    ),
}
BLOCK_TEXT = re.compile(r"^<!-- table: .*?^<!-- /table -->$", re.MULTILINE | re.DOTALL)


def hand_written_tables(text: str) -> list[str]:
    """Header lines of the Markdown tables outside generated blocks and code fences."""
    text = BLOCK_TEXT.sub("", FENCE.sub("", text))
    lines = text.splitlines()
    return [line for index, line in enumerate(lines) if line.startswith("|") and not lines[index - 1].startswith("|")]


@pytest.mark.parametrize("document", sorted(DESCRIPTIVE))
def test_no_measurement_is_written_by_hand(document: str) -> None:
    """Every table of README.md and docs/benchmarks.md outside a generated block is a descriptive one."""
    tables = hand_written_tables((ROOT / document).read_text(encoding="utf-8"))
    assert [header for header in tables if header not in DESCRIPTIVE[document]] == []


def test_every_kept_run_is_complete_and_used() -> None:
    """Each file in docs/runs/ loads (a suite run or a script's figure) and feeds at least one block."""
    named = {
        path
        for document in documents(ROOT)
        for match in re.finditer(r"^<!-- table: \S+ run=(\S+) -->$", document.read_text(encoding="utf-8"), re.M)
        for path in match[1].split(",")
    }
    for path in (ROOT / "docs" / "runs").glob("*.json"):
        assert path.relative_to(ROOT).as_posix() in named, path
        document = json.loads(path.read_text(encoding="utf-8"))
        assert load_figure(path).rows if "figure" in document else load_run(path).cells, path


def write_document(root: Path, body: str) -> Path:
    (root / "docs" / "runs").mkdir(parents=True)
    shutil.copy(RUN, root / "docs" / "runs" / "full.json")
    readme = root / "README.md"
    readme.write_text(
        f"# title\n\nprose\n\n<!-- table: results run=docs/runs/full.json -->\n{body}<!-- /table -->\n\nafter\n",
        encoding="utf-8",
    )
    return readme


def test_check_reports_a_stale_block_and_publish_rewrites_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = write_document(tmp_path, "| old | table |\n")
    before = readme.read_text(encoding="utf-8")
    assert main(["publish", "--check", "--root", str(tmp_path)]) == 1
    assert "README.md:5: table results from docs/runs/full.json: differs from its run" in capsys.readouterr().out
    assert readme.read_text(encoding="utf-8") == before  # --check writes nothing

    assert main(["publish", "--root", str(tmp_path)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# title\n\nprose\n\n<!-- table: results run=docs/runs/full.json -->\n")
    assert text.endswith("<!-- /table -->\n\nafter\n")
    run = load_run(tmp_path / "docs" / "runs" / "full.json")
    assert f"commit `{run.commit_info['id'][:7]}`" in text
    assert f"machine `{run.machine_info['node']}`" in text
    assert f"{run.started:%Y-%m-%d}" in text
    for method in ("disk", "lmdb", "hdf5"):
        assert f"| `{method}` |" in text
    assert main(["publish", "--check", "--root", str(tmp_path)]) == 0


def test_keep_copies_a_run_without_its_rounds(tmp_path: Path) -> None:
    readme = write_document(tmp_path, "")
    kept = tmp_path / "docs" / "runs" / "full.json"
    kept.unlink()
    assert main(["publish", "--keep", str(RUN), str(kept), "--root", str(tmp_path)]) == 0
    document = json.loads(kept.read_text(encoding="utf-8"))
    assert all("data" not in bench["stats"] for bench in document["benchmarks"])
    assert kept.stat().st_size < RUN.stat().st_size
    original, copy = load_run(RUN), load_run(kept)
    assert [cell.stats["median"] for cell in copy.cells] == [cell.stats["median"] for cell in original.cells]
    assert "| `hdf5` |" in readme.read_text(encoding="utf-8")


def test_markers_in_a_code_fence_are_examples(tmp_path: Path) -> None:
    write_document(tmp_path, "")
    example = "```md\n<!-- table: nosuch run=docs/runs/missing.json -->\n<!-- /table -->\n```\n"
    (tmp_path / "docs" / "other.md").write_text(example, encoding="utf-8")
    assert main(["publish", "--root", str(tmp_path)]) == 0
    assert (tmp_path / "docs" / "other.md").read_text(encoding="utf-8") == example


def test_a_hand_edited_figure_is_stale(tmp_path: Path) -> None:
    readme = write_document(tmp_path, "")
    assert main(["publish", "--root", str(tmp_path)]) == 0
    text = readme.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `lmdb` |"))
    cells = row.split(" | ")
    cells[1] = "1 ms"
    readme.write_text(text.replace(row, " | ".join(cells)), encoding="utf-8")
    assert main(["publish", "--check", "--root", str(tmp_path)]) == 1


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("<!-- table: nosuch run=docs/runs/full.json -->\n<!-- /table -->\n", "no table named 'nosuch'"),
        ("<!-- table: results run=docs/runs/missing.json -->\n<!-- /table -->\n", "no such file"),
        ("<!-- table: results run=docs/runs/full.json -->\nunclosed\n", "has no `<!-- /table -->`"),
        ("<!-- table: figure run=docs/runs/full.json -->\n<!-- /table -->\n", "not a saved figure"),
        ("<!-- table: loaders run=docs/runs/full.json -->\n<!-- /table -->\n", "finds nothing to show"),
    ],
)
def test_bad_blocks_are_refused_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], marker: str, message: str
) -> None:
    write_document(tmp_path, "")
    (tmp_path / "docs" / "other.md").write_text(marker, encoding="utf-8")
    before = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert main(["publish", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    # the README, before docs/other.md in the walk, is not left half-written: nothing is written on bad input
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == before


def test_every_shaper_draws_the_fixture_runs() -> None:
    """(No fixture has remote cells: the kept remote run's block covers that shaper.)"""
    runs = [load_run(Path(__file__).parent / "data" / name) for name in (RUN.name, *FIXTURES)]
    for name, shaper in SHAPERS.items():
        if name in FIGURE_SHAPERS or name == "remote":
            continue
        header, rows = shaper(runs)
        assert rows, name
        assert all(len(row) == len(header) for row in rows), name


def save_figure(path: Path, command: str, rows: list[list[str]]) -> None:
    machine = {"node": "box", "cpu": {"brand_raw": "CPU", "count": 4}, "command": command}
    document = figure_document(
        "demo", datetime(2026, 12, 8, tzinfo=timezone.utc), machine, {"id": "abcdef0123"}, ("a", "b"), rows
    )
    path.write_text(json.dumps(document), encoding="utf-8")


def test_a_scripts_figure_is_published_with_its_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = write_document(tmp_path, "")
    save_figure(
        tmp_path / "docs" / "runs" / "demo.json",
        "python -m benchmarks.demo --save docs/runs/demo.json",
        [["x", "1 ms"]],
    )
    (tmp_path / "docs" / "other.md").write_text(
        "<!-- table: figure run=docs/runs/demo.json -->\n<!-- /table -->\n", encoding="utf-8"
    )
    assert main(["publish", "--root", str(tmp_path)]) == 0
    text = (tmp_path / "docs" / "other.md").read_text(encoding="utf-8")
    assert "commit `abcdef0`, machine `box` (CPU × 4, ?), 2026-12-08 00:00 UTC" in text
    assert "made by `python -m benchmarks.demo --save docs/runs/demo.json`" in text
    assert "| a | b |\n|---|---|\n| x | 1 ms |" in text
    assert "command not recorded" in readme.read_text(encoding="utf-8")  # the fixture run predates the field

    assert main(["publish", "--commands", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "# docs/runs/demo.json: feeds docs/other.md:1 (figure)\npython -m benchmarks.demo --save" in out
    assert "# docs/runs/full.json: feeds README.md:5 (results)\n(not recorded" in out
    assert out.endswith("python -m reports publish\n")


def test_commands_prints_a_suite_runs_command_and_its_keep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_document(tmp_path, "")
    kept = tmp_path / "docs" / "runs" / "full.json"
    document = json.loads(kept.read_text(encoding="utf-8"))
    document["machine_info"]["command"] = "pytest benchmarks --cutoffs 10 --benchmark-json 'my run.json'"
    kept.write_text(json.dumps(document), encoding="utf-8")
    assert main(["publish", "--commands", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "pytest benchmarks --cutoffs 10 --benchmark-json 'my run.json'\n" in out
    assert "python -m reports publish --keep 'my run.json' docs/runs/full.json\n" in out
    assert main(["publish", "--root", str(tmp_path)]) == 0
    assert "made by `pytest benchmarks --cutoffs 10" in (tmp_path / "README.md").read_text(encoding="utf-8")


def test_a_script_saves_a_figure_publish_reads(tmp_path: Path) -> None:
    """benchmarks/tutorial_single.py --save writes the documented format with its command, commit and machine."""
    from benchmarks import tutorial_single

    saved = tmp_path / "single.json"
    assert tutorial_single.main(["--repeats", "1", "--save", str(saved)]) == 0
    figure = load_figure(saved)
    assert figure.machine_info["command"] == f"python -m benchmarks.tutorial_single --repeats 1 --save {saved}"
    assert figure.commit_info["id"] and figure.machine_info["cpu"]["count"] >= 1
    assert [row[0] for row in figure.rows] == ["disk", "lmdb", "hdf5"]
