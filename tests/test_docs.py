"""Design citations cannot rot: every `docs/design.md#anchor` cited in the code exists.

Code comments, docstrings, configs and the README cite sections of docs/design.md by their
explicit anchors (`## Tiling {#tiling}`); renaming or deleting a section must fail here, not
leave readers at a dead link. Also: no citation of design notes outside the repository, and every
public name (a package's `__all__`) has its entry in docs/api.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
API = ROOT / "docs" / "api.md"
# Where citations live (the docs themselves are checked by the strict mkdocs build).
CITING = ("src", "benchmarks", "README.md")
SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml", ".cfg", ".txt"}

CITATION = re.compile(r"docs/design\.md#([A-Za-z0-9_-]+)")
# "## Heading {#anchor}" or "{: #anchor }" attribute lists.
EXPLICIT_ANCHOR = re.compile(r"\{:?\s*#([A-Za-z0-9_-]+)[^}]*\}")
DESIGN_MENTION = re.compile(r"DESIGN(\.md)?\b")


def explicit_anchors(markdown: str) -> set[str]:
    """Anchors declared with attr_list (`{#name}`) in a Markdown text, outside code fences."""
    anchors: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            anchors.update(EXPLICIT_ANCHOR.findall(line))
    return anchors


def citations(text: str) -> list[str]:
    return CITATION.findall(text)


def citing_files() -> list[Path]:
    files: list[Path] = []
    for entry in CITING:
        path = ROOT / entry
        if path.is_file():
            files.append(path)
        else:
            files.extend(p for p in sorted(path.rglob("*")) if p.suffix in SUFFIXES)
    return files


def test_anchor_and_citation_parsers() -> None:
    text = "## Tiling {#tiling}\n```\n## Not {#in-code}\n```\ntext {: #attr-style }\n"
    assert explicit_anchors(text) == {"tiling", "attr-style"}
    assert citations("see docs/design.md#norm-expansion, and docs/design.md#x.") == [
        "norm-expansion",
        "x",
    ]


def test_design_page_has_the_sections_the_code_builds_on() -> None:
    anchors = explicit_anchors(DESIGN.read_text(encoding="utf-8"))
    for anchor in (
        "model",
        "matching",
        "ablations",
        "losses",
        "matcher",
        "norm-expansion",
        "tiling",
        "variable-length",
        "protocol",
        "protocol-edge-cases",
        "readings",
    ):
        assert anchor in anchors, f"docs/design.md lost the {{#{anchor}}} section"


def test_every_cited_design_anchor_exists() -> None:
    anchors = explicit_anchors(DESIGN.read_text(encoding="utf-8"))
    broken, cited = [], 0
    for path in citing_files():
        found = citations(path.read_text(encoding="utf-8", errors="replace"))
        cited += len(found)
        broken += [f"{path.relative_to(ROOT)}: #{a}" for a in sorted(set(found) - anchors)]
    assert cited > 0, "no docs/design.md#anchor citation found: is the search looking anywhere?"
    assert not broken, (
        "cited sections that docs/design.md does not define (give the section an explicit "
        "{#anchor}):\n" + "\n".join(broken)
    )


def test_no_citation_of_design_notes_outside_the_repository() -> None:
    outside = []
    for path in citing_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            outside += [
                f"{path.relative_to(ROOT)}:{number}: {m.group(0)}"
                for m in DESIGN_MENTION.finditer(line)
                if not (ROOT / m.group(0)).is_file()
            ]
    assert not outside, (
        "citations of design notes that are not files in the repository (cite "
        "docs/design.md#anchor instead):\n" + "\n".join(outside)
    )


# Packages whose `__all__` is the public API; each name there must be in the API reference.
PUBLIC_PACKAGES = (
    "duatm",
    "duatm.models",
    "duatm.losses",
    "duatm.metrics",
    "duatm.data",
    "duatm.data.datasets",
    "duatm.search",
)


def test_api_reference_lists_every_public_name() -> None:
    documented = set(re.findall(r"^::: ([\w.]+)", API.read_text(encoding="utf-8"), re.M))
    short = {name.rsplit(".", 1)[-1] for name in documented}
    missing = []
    for package in PUBLIC_PACKAGES:
        for name in importlib.import_module(package).__all__:
            if name.startswith("__"):  # __version__
                continue
            if f"{package}.{name}" not in documented and name not in short:
                missing.append(f"::: {package}.{name}")
    assert not missing, "add to docs/api.md (the public API must be documented):\n" + "\n".join(
        missing
    )


def test_docstring_roles_become_links_code_or_colons() -> None:
    pytest.importorskip(
        "griffe"
    )  # the docs extra; `make docs` runs the same code on every docstring
    spec = importlib.util.spec_from_file_location(
        "roles", ROOT / "tools" / "griffe_sphinx_roles.py"
    )
    assert spec is not None and spec.loader is not None
    roles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roles)
    seen = []

    def link_for(target: str, display: str) -> str:
        seen.append(target)
        return f"<{display}|{target}>"

    text = (
        "See :func:`load`, :class:`~duatm.config.ConfigError` and\n"
        ":meth:`pairwise\n    <duatm.models.matching.DualAttentionMatcher.pairwise>`. Example::\n"
        "\n    code\n"
    )
    assert roles.convert(text, link_for) == (
        "See <load|load>, <ConfigError|duatm.config.ConfigError> and\n"
        "<pairwise|duatm.models.matching.DualAttentionMatcher.pairwise>. Example:\n\n    code\n"
    )
    assert seen == [
        "duatm.models.matching.DualAttentionMatcher.pairwise",
        "load",
        "duatm.config.ConfigError",
    ]
    assert roles.rendered_identifiers(ROOT / "docs") >= {"duatm.load", "duatm.models.DuATM"}


def test_api_reference_documents_each_name_once() -> None:
    """Two blocks for one name would give two headings with the same anchor."""
    documented = re.findall(r"^::: ([\w.]+)", API.read_text(encoding="utf-8"), re.M)
    twice = sorted({name for name in documented if documented.count(name) > 1})
    assert not twice, f"docs/api.md documents these more than once: {', '.join(twice)}"


def test_readme_links_into_the_repository_exist() -> None:
    """The README is the front door: each relative link must reach a file (docs pages move)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(((?!https?://)[^)#\s]+)", readme)
    assert targets, "the README links nowhere into the repository"
    missing = sorted({t for t in targets if not (ROOT / t).exists()})
    assert not missing, f"README.md links to missing files: {', '.join(missing)}"


SNIPPET = re.compile(r'^--8<-- "([^":]+):([^"]+)"$', re.MULTILINE)


def test_every_source_include_resolves_and_the_build_expands_it() -> None:
    """`--8<-- "file:section"` lines (docs/guide/configs.md shows the config schema this way)
    name a file with that section's markers, and mkdocs.yml enables the extension that expands
    them: without it the page shows the bare `--8<--` line and no key at all."""
    includes = [
        (page, *match)
        for page in sorted((ROOT / "docs").rglob("*.md"))
        for match in SNIPPET.findall(page.read_text(encoding="utf-8"))
    ]
    assert includes, "expected the config schema include in docs/guide/configs.md"
    for page, source, section in includes:
        text = (ROOT / source).read_text(encoding="utf-8")
        for marker in (f"--8<-- [start:{section}]", f"--8<-- [end:{section}]"):
            assert marker in text, f"{page.name}: {source} has no {marker!r}"
    assert re.search(r"^\s*- pymdownx\.snippets\b", (ROOT / "mkdocs.yml").read_text(), re.M)
