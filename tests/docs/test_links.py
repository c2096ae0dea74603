"""Every relative link in README.md, examples/README.md and docs/*.md points to a file that exists (and, with a
#fragment, to a heading of that file); docs/architecture.md's module map names every module of the package."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", ROOT / "examples" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _without_code(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


def relative_links(page: Path) -> list[str]:
    found = [a or b for a, b in LINK.findall(_without_code(page.read_text()))]
    return [t for t in found if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto: are not files


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", _without_code(page.read_text()), flags=re.M):
        out.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_files(page):
    links = relative_links(page)
    for target in links:
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"
        if fragment:
            assert fragment in anchors(dest), f"{page.relative_to(ROOT)} links {target}: no such heading"


def test_the_pages_have_links():
    assert len(relative_links(ROOT / "README.md")) >= 15  # the link pattern still finds the README's links


def test_the_module_map_names_every_module():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    package = ROOT / "emo_slice"
    missing = [
        rel
        for f in sorted(package.rglob("*.py"))
        if (rel := f.relative_to(package).as_posix())
        and not (f.name == "__init__.py" and not f.read_text().strip().strip('"'))
        and f"`{rel}`" not in doc
    ]
    assert not missing, f"docs/architecture.md's module map misses {missing}"
