"""Links into docs/design resolve, and the code cites the design only through such links.

Docstrings and comments used to cite pages a reader of the repository cannot open ("03 §1.8",
"decision 11", "PD-7"). The design now lives in docs/design, and every citation is a relative
markdown link to a heading there. These tests check that

- every link (in the repository's .py and .md files) whose target lies in docs/design names an
  existing file and, when it has an anchor, a heading of that file (GitHub's slug rules);
- no bare citation is left in the code: a citation pattern may only occur inside the text of such a
  link.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design"
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}

# Directories whose .py files must not cite the design except through links.
CHECKED_DIRS = ("backtest_kit", "tests", "examples", "benchmarks")

LINK = re.compile(r"\[([^\]\n]*)\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
BARE_CITATION = re.compile(
    r"\b0[0-4] ?§"  # "03 §1.8", "02 §4"
    r"|§ ?\d"  # "§5.2"
    r"|\b[Dd]ecisions? \d"  # "decision 11", "decisions 1-3"
    r"|\bPD[- ]?\d"  # "PD-7"
    r"|\b[Pp]age 0[0-4]\b"  # "page 04"
    r"|\b[Hh]ardening (?:item |#)?\d"  # "hardening item 2", "Hardening #7"
)


def _files(suffixes: tuple[str, ...], under: Path = ROOT) -> Iterator[Path]:
    for path in sorted(under.rglob("*")):
        if path.suffix in suffixes and path.is_file() and not SKIP_DIRS.intersection(path.relative_to(ROOT).parts):
            yield path


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a markdown heading (before de-duplication)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.strip().lower()
    kept = []
    for ch in text:
        if ch in " -_" or ch.isalnum() or unicodedata.category(ch).startswith(("L", "N", "M")):
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


def heading_slugs(path: Path) -> set[str]:
    slugs: set[str] = set()
    seen: dict[str, int] = {}
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match is None:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        slugs.add(slug if count == 0 else f"{slug}-{count}")
    return slugs


def design_links() -> list[tuple[Path, int, str, Path, str]]:
    """(file, line, link text, target file, anchor) of every link that points into docs/design."""
    links = []
    for path in _files((".py", ".md")):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in LINK.finditer(line):
                target = match.group(2)
                if "://" in target or target.startswith(("mailto:", "#")):
                    if target.startswith("#") and path.parent == DESIGN:
                        links.append((path, lineno, match.group(1), path, target[1:]))
                    continue
                file_part, _, anchor = target.partition("#")
                resolved = (path.parent / file_part).resolve()
                if resolved == DESIGN or DESIGN in resolved.parents:
                    links.append((path, lineno, match.group(1), resolved, anchor))
    return links


def test_design_pages_exist() -> None:
    for name in ("README.md", "public-api.md", "lifecycle.md", "events-and-api.md",
                 "risk-sizing-portfolio.md", "decisions.md"):
        assert (DESIGN / name).is_file(), name


def test_github_slug_rules() -> None:
    assert github_slug("1.8 Persistence of the registry") == "18-persistence-of-the-registry"
    assert github_slug("Decision 11: instances are keyed by mode, symbol and strategy") == (
        "decision-11-instances-are-keyed-by-mode-symbol-and-strategy"
    )
    assert github_slug("6. Helpers usable inside get_signal") == "6-helpers-usable-inside-get_signal"
    assert github_slug("Decision 8: Backtest.run yields `every` trade") == "decision-8-backtestrun-yields-every-trade"


def test_every_design_link_resolves() -> None:
    links = design_links()
    assert len(links) > 150, "the scan found too few links into docs/design; is the pattern broken?"
    problems = []
    slugs: dict[Path, set[str]] = {}
    for path, lineno, text, target, anchor in links:
        where = f"{path.relative_to(ROOT)}:{lineno} [{text}]"
        if not target.is_file():
            problems.append(f"{where}: no file {target.relative_to(ROOT)}")
            continue
        if anchor:
            if target not in slugs:
                slugs[target] = heading_slugs(target)
            if anchor not in slugs[target]:
                problems.append(f"{where}: no heading #{anchor} in {target.relative_to(ROOT)}")
    assert not problems, "\n".join(problems)


def test_design_headings_are_unique() -> None:
    for path in _files((".md",), DESIGN):
        names = [github_slug(m.group(2)) for line in path.read_text(encoding="utf-8").splitlines()
                 if (m := HEADING.match(line))]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        assert not duplicates, f"{path.name}: duplicate headings {duplicates} (their anchors would shift)"


def bare_citations(path: Path) -> list[str]:
    found = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        unlinked = LINK.sub(lambda m: "" if "docs/design" in m.group(2) else m.group(0), line)
        if BARE_CITATION.search(unlinked):
            found.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    return found


@pytest.mark.parametrize("directory", CHECKED_DIRS)
def test_no_bare_citations(directory: str) -> None:
    this = Path(__file__).resolve()
    found = [hit for path in _files((".py", ".md"), ROOT / directory) if path != this
             for hit in bare_citations(path)]
    assert not found, "cite the design as a link into docs/design:\n" + "\n".join(found)


def test_no_bare_citations_in_user_docs() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = [hit for path in pages for hit in bare_citations(path)]
    assert not found, "cite the design as a link into docs/design:\n" + "\n".join(found)


def test_bare_citation_pattern() -> None:
    for text in ("03 §1.8", "page 01 §5", "decision 11", "decisions 1–3", "PD-7", "page 04",
                 "hardening item 2", "Hardening #7"):
        assert BARE_CITATION.search(text), text
    linked = "see [decision 11](../../docs/design/decisions.md#decision-11-x) here"
    assert not BARE_CITATION.search(LINK.sub("", linked))
