"""The published tables: every generated block of README.md and docs/*.md is what its saved run gives
(`python -m reports publish --check`), and the command finds, rewrites and refuses blocks as documented."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reports.cli import main
from reports.results import load_run
from reports.tables import SHAPERS

ROOT = Path(__file__).resolve().parent.parent
RUN = Path(__file__).parent / "data" / "run-full.json"


def test_published_tables_match_their_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["publish", "--check", "--root", str(ROOT)])
    assert code == 0, capsys.readouterr().out + "\nrun `python -m reports publish` and commit the result"


def test_the_repository_has_generated_blocks() -> None:
    """The README's results table and docs/benchmarks.md's figure tables are generated, each from a kept run."""
    for document, count in (("README.md", 1), ("docs/benchmarks.md", 3)):
        text = (ROOT / document).read_text(encoding="utf-8")
        assert text.count("<!-- table: ") >= count, document
    for path in (ROOT / "docs" / "runs").glob("*.json"):
        assert load_run(path).cells


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


def test_every_shaper_draws_the_fixture_run() -> None:
    run = load_run(RUN)
    for name, shaper in SHAPERS.items():
        header, rows = shaper([run])
        assert rows, name
        assert all(len(row) == len(header) for row in rows), name
