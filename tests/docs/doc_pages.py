"""The documentation as data: its pages, their fenced code snippets, their headings' anchors.

A snippet may be preceded by an HTML comment that says what the tests do with it beyond the
checks every snippet of its language gets (invisible on the rendered page)::

    <!-- snippet: dag -->        a complete DAG file: run with ``dag.test()`` against the emulator

Paths under ``/data/`` in a snippet stand for the reader's own folder; a test that runs the
snippet maps them to a temporary folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from markdown.extensions.toc import slugify

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README = REPO / "README.md"

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
_MARK = re.compile(r"^\s*<!--\s*snippet:\s*(?P<mark>[\w-]+)\s*-->\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass(frozen=True)
class Snippet:
    """One fenced code block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    mark: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    def __str__(self) -> str:
        return self.where


def pages() -> list[Path]:
    """Every Markdown page of the site, and the README (the front door)."""
    return [*sorted(DOCS.rglob("*.md")), README]


def snippets(page: Path) -> list[Snippet]:
    """The fenced code blocks of ``page``, dedented to their fence, in page order."""
    found: list[Snippet] = []
    lines = page.read_text(encoding="utf-8").split("\n")
    opened: tuple[int, str, str, str | None] | None = None  # line, indent, lang, mark
    body: list[str] = []
    for number, line in enumerate(lines, start=1):
        fence = _FENCE.match(line)
        if opened is None:
            if fence:
                previous = next((text for text in reversed(lines[: number - 1]) if text.strip()), "")
                mark = _MARK.match(previous)
                opened = (number, fence["indent"], fence["lang"], mark["mark"] if mark else None)
                body = []
        elif fence and not fence["lang"] and len(fence["indent"]) <= len(opened[1]):
            start, indent, lang, mark = opened
            text = "\n".join(text[len(indent) :] if text.startswith(indent) else text for text in body)
            found.append(Snippet(page, start, lang, text + "\n", mark))
            opened = None
        else:
            body.append(line)
    assert opened is None, f"{page.relative_to(REPO)}:{opened[0]}: a code fence is never closed"
    return found


def all_snippets(lang: str | None = None, mark: str | None = None) -> list[Snippet]:
    """Every snippet of every page, of ``lang`` and carrying ``mark`` when given."""
    return [
        snippet
        for page in pages()
        for snippet in snippets(page)
        if (lang is None or snippet.lang == lang) and (mark is None or snippet.mark == mark)
    ]


def anchors(page: Path) -> set[str]:
    """The anchors of ``page``'s headings, as mkdocs makes them (the ``toc`` extension's slugify)."""
    found: set[str] = set()
    in_fence = False
    for line in page.read_text(encoding="utf-8").split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        heading = None if in_fence else _HEADING.match(line)
        if heading:
            found.add(slugify(heading[2].replace("`", ""), "-"))
    return found


def prose(page: Path) -> str:
    """``page`` without its fenced code blocks."""
    kept: list[str] = []
    in_fence = False
    for line in page.read_text(encoding="utf-8").split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            kept.append(line)
    return "\n".join(kept)


def table_rows(page: Path, header: str) -> list[list[str]]:
    """The body rows of the Markdown table of ``page`` whose header row starts with ``header``."""
    rows: list[list[str]] = []
    inside = False
    for line in page.read_text(encoding="utf-8").split("\n"):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if not cells:
            if inside:
                return rows
            continue
        if not inside:
            inside = cells[0] == header
        elif not set(line) <= set("|- :"):
            rows.append(cells)
    assert inside, f"{page.relative_to(REPO)} has no table headed {header!r}"
    return rows
