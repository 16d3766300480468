"""The repository stands alone: it cites its own docs/ and the specs, never a file outside it.

- No file of the repository cites one of the team's outside reference files (their bare names are
  built below, so that this file does not cite them itself), nor the directory they lived in.
  ``results.md`` is also the name of ``scripts/bench``'s output file: only a *citation* of it
  (``results.md §N``, ``reference/results.md``) counts.
- Every ``docs/<page>.rst "<Section>"`` citation (one or more titles, separated by commas) names
  a page of docs/ and section titles that page has.  Citations may be broken across lines, in
  comments and docstrings alike.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"

#: The outside files, by stem: they were never part of the repository.
OUTSIDE = ("overlay", "oci", "pyfuse3", "peers")
OUTSIDE_DIR = "/".join(("", "work", "shared"))
_BARE = re.compile(r"(?<![\w./-])(?:reference/)?(?:" + "|".join(OUTSIDE) + r")\.md\b")
_RESULTS = re.compile(r"(?:reference/|reference\s+)results\.md\b|(?<![\w./-])results\.md\s*\u00a7")
_SECTION_SIGN = "\u00a7"

#: ``docs/<page>.rst`` and the quoted titles that follow it (``"A"``, or ``'A'`` inside a Python
#: string delimited by ``"``), separated by commas.
_CITATION = re.compile(r"docs/(?P<page>[\w-]+)\.rst(?:``)?(?P<titles>(?:,?\s+(?:\"[^\"\n]+\"|'[^'\n]+'))*)")
_TITLE = re.compile(r"\"([^\"\n]+)\"|'([^'\n]+)'")
#: A line break inside a comment or docstring, with the next line's comment leader.
_BREAK = re.compile(r"[ \t]*\n[ \t]*(?:#:?|\*(?!/)|//)?[ \t]*")
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+:.])\1+\s*$")


def repository_files() -> list[Path]:
    """Every tracked or new (not ignored) text file of the repository, but this one (its examples
    are made to look like the citations it hunts)."""
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"],
                         check=True, capture_output=True, text=True).stdout
    files = []
    for rel in out.splitlines():
        path = REPO / rel
        if not path.is_file() or path.is_symlink() or path == Path(__file__).resolve():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        files.append(path)
    return files


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def section_titles(page: Path) -> set[str]:
    """The section titles of a reStructuredText page (any underline character, with or without an
    overline)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    titles = set()
    for i in range(len(lines) - 1):
        title = lines[i].strip()
        under = _UNDERLINE.match(lines[i + 1])
        if (title and under and not _UNDERLINE.match(lines[i]) and len(lines[i + 1].rstrip()) >= len(title)
                and not lines[i].startswith(" ")):
            titles.add(title)
    return titles


def citations(text: str) -> list[tuple[str, list[str]]]:
    """(page, titles) of every docs/ citation in ``text``, line breaks and comment leaders inside a
    citation ignored."""
    joined = _BREAK.sub(" ", text)
    return [(m.group("page"), [a or b for a, b in _TITLE.findall(m.group("titles"))])
            for m in _CITATION.finditer(joined)]


def outside_citations(path: Path, text: str) -> list[str]:
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        for rx in (_BARE, _RESULTS):
            for m in rx.finditer(line):
                problems.append(f"{path.relative_to(REPO)}:{n}: cites {m.group(0)!r}, a file outside the repository")
        if OUTSIDE_DIR in line:
            problems.append(f"{path.relative_to(REPO)}:{n}: names {OUTSIDE_DIR}, outside the repository")
    return problems


def test_no_file_cites_the_outside_reference_files() -> None:
    problems = []
    for path in repository_files():
        text = _text(path)
        if text is not None:
            problems += outside_citations(path, text)
    assert not problems, "\n".join(problems)


def test_every_docs_citation_names_a_page_and_a_section_that_exist() -> None:
    pages = {p.stem: section_titles(p) for p in DOCS.glob("*.rst")}
    problems = []
    seen = 0
    for path in repository_files():
        text = _text(path)
        if text is None:
            continue
        for page, titles in citations(text):
            seen += 1
            if page not in pages:
                problems.append(f"{path.relative_to(REPO)}: cites docs/{page}.rst, which does not exist")
                continue
            for title in titles:
                if title not in pages[page]:
                    problems.append(f"{path.relative_to(REPO)}: cites docs/{page}.rst {title!r}, "
                                    f"not a section of that page")
    assert not problems, "\n".join(problems)
    assert seen > 0, "no docs/ citation found at all: the scan itself is broken"


def test_every_docs_page_opens_with_what_it_covers() -> None:
    for page in DOCS.glob("*.rst"):
        text = page.read_text(encoding="utf-8")
        assert _SECTION_SIGN not in text, f"{page.name}: a \u00a7 number, as the outside files used"
        if page.stem != "index":
            assert "What this page covers" in text and "implements it" in text, page.name


@pytest.mark.parametrize("text, problems", [
    ("see " + OUTSIDE[0] + ".md " + _SECTION_SIGN + "2", 1),
    ("(reference/" + OUTSIDE[3] + ".md " + _SECTION_SIGN + "1)", 1),
    ("the " + OUTSIDE[1] + ".md", 1),
    ("results.md " + _SECTION_SIGN + "3", 1),
    ('write_markdown(report, out / "results.md")', 0),
    ("image-spec config.md, distribution's docs/spec/auth/token.md", 0),
    ("docs/" + OUTSIDE[1] + ".rst", 0),
])
def test_the_outside_file_check_can_fail(text: str, problems: int) -> None:
    assert len(outside_citations(REPO / "x", text)) == problems


@pytest.mark.parametrize("text, want", [
    ('(docs/overlay.rst "Readdir")', [("overlay", ["Readdir"])]),
    ('docs/oci.rst "Platforms", "References"; docs/fuse.rst', [("oci", ["Platforms", "References"]),
                                                              ("fuse", [])]),
    ('# (docs/overlay.rst "Whiteouts and\n# opaque directories")', [("overlay", ["Whiteouts and opaque directories"])]),
    (" * docs/fuse.rst\n * \"What a request costs\": x", [("fuse", ["What a request costs"])]),
    ("\"(see docs/peers.rst 'Workloads')\"", [("peers", ["Workloads"])]),
    ('see ``docs/oci.rst`` "Overlay form"', [("oci", ["Overlay form"])]),
])
def test_citations_are_found_across_lines(text: str, want: list[tuple[str, list[str]]]) -> None:
    assert citations(text) == want
