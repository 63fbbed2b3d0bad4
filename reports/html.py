"""Self-contained HTML pages: history.html (interactive charts over commits) and report.html (report.md as HTML).

Both open from the file system with no network: the data, the style and the scripts (reports/assets/, small
vanilla JavaScript drawing inline SVG) are written into the page. docs/reports.md says why no plotting library.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

ASSETS = Path(__file__).parent / "assets"


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def _page(title: str, body: str, script: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>\n{_asset('page.css')}</style>\n</head>\n<body>\n{body}\n"
        f"<script>\n{script}</script>\n</body>\n</html>\n"
    )


def _select(name: str, label: str, options: Mapping[str, str]) -> str:
    choices = "".join(
        f'<option value="{html.escape(value)}">{html.escape(text)}</option>' for value, text in options.items()
    )
    return f'<label>{label} <select id="{name}">{choices}</select></label>'


def history_page(document: Mapping[str, Any], mode: str = "raw") -> str:
    """history.html for a history.json document, first showing ``mode`` ("raw" or "floor")."""
    commits = document["commits"]
    data = json.dumps(document, separators=(",", ":")).replace("</", "<\\/")
    modes = {"raw": "raw times", "floor": "over floor"}
    controls = "\n".join(
        [
            _select("mode", "values", {mode: modes[mode], **{key: text for key, text in modes.items() if key != mode}}),
            _select("scale", "y axis", {"log": "log", "linear": "linear"}),
            _select("method", "method", {"": "all"}),
            _select("operation", "operation", {"": "all"}),
            _select("size", "images", {"": "all"}),
            '<span id="summary"></span>',
        ]
    )
    body = (
        f"<h1>Benchmark history</h1>\n<p>{len(commits)} commits from {html.escape(commits[0]['short'])} to "
        f"{html.escape(commits[-1]['short'])}; one point per commit (the median of its runs, bars: min–max "
        "of the "
        "runs); dashed red lines mark the steps found (history.md lists them). Hover a point for its commit.</p>\n"
        f'<div class="controls">{controls}</div>\n<div id="charts"></div>\n<div id="tip"></div>\n'
        f'<script type="application/json" id="history-data">{data}</script>'
    )
    return _page("Benchmark history", body, _asset("history.js"))


def _inline_svg(path: Path) -> str | None:
    """The <svg> element of a chart file, without its XML prolog, or None when the file is missing."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    start = text.find("<svg")
    return text[start:] if start >= 0 else None


def report_page(report_md: Path) -> str:
    """report.html: report.md rendered (raw HTML in it escaped), each PNG chart replaced by its SVG twin inline."""
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    default_image = parser.renderer.rules.get("image")

    def image(tokens, index, options, env):  # markdown-it's renderer rule signature
        svg = _inline_svg(report_md.parent / Path(tokens[index].attrGet("src") or "").with_suffix(".svg").name)
        return f'<figure class="chart">{svg}</figure>' if svg else default_image(tokens, index, options, env)

    parser.renderer.rules["image"] = image
    body = parser.render(report_md.read_text(encoding="utf-8"))
    title = re.search(r"<h1>(.*?)</h1>", body)
    return _page(html.unescape(title.group(1)) if title else "Benchmark report", body, _asset("sort.js"))
