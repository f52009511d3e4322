"""The docs hold together: every relative link and #anchor in README.md and docs/ resolves (GitHub heading slugs),
the README stays one screen plus an index, and figures are placed by date and commit, never by "session"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _lines_outside_code(path: Path, *, strip_code_spans: bool = True):
    fence = False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            fence = not fence
        elif not fence:
            yield n, re.sub(r"`[^`]*`", "", line) if strip_code_spans else line


def slugs(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to '-', repeats numbered."""
    out, seen = set(), {}
    for _, line in _lines_outside_code(path, strip_code_spans=False):  # a heading's code text is in its anchor
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))
        s = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def broken_links(pages: list[Path]) -> list[str]:
    bad = []
    for page in pages:
        for n, line in _lines_outside_code(page):
            for target in LINK.findall(line):
                if re.match(r"^[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                dest = (page.parent / path).resolve() if path else page.resolve()
                where = f"{page.name}:{n}"
                if not dest.exists():
                    bad.append(f"{where}: {target}: no such file")
                elif anchor and dest.suffix == ".md" and anchor not in slugs(dest):
                    bad.append(f"{where}: {target}: no such heading")
    return bad


def test_every_link_and_anchor_resolves():
    assert broken_links(PAGES) == []


def test_the_checker_finds_a_broken_file_and_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "a.md"
    (tmp_path / "docs" / "b.md").write_text("# Title\n\n## Some section: here\n")
    page.write_text("[ok](b.md#some-section-here) [gone](c.md) [typo](b.md#some-section)\n```\n[code](x.md)\n```\n")
    found = broken_links([page])
    assert len(found) == 2 and "c.md: no such file" in found[0] and "no such heading" in found[1]


def test_readme_is_one_screen_plus_an_index():
    readme = ROOT / "README.md"
    assert readme.stat().st_size <= 15_000
    assert "docs/index.md" in readme.read_text(encoding="utf-8")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_figure_is_placed_by_session(page):
    assert not re.search(r"\bsessions?\b", page.read_text(encoding="utf-8"), re.IGNORECASE)
