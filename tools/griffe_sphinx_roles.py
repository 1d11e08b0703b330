"""Griffe extension for the docs build: the project's Sphinx-style docstring markup as Markdown.

Why: docstrings here are written to read well in ``help()`` and editors, with Sphinx roles
(``:func:`load```, ``:class:`~duatm.config.ConfigError```) and ``::`` literal-block markers.
mkdocstrings renders docstrings as Markdown, where those would show up as raw text. This
extension rewrites them when the API reference is built, without touching the source:

* a role whose target resolves (relative to the object, through its module's imports, or as a
  full path) to an object the reference renders becomes a cross-reference link;
* a target inside the package that does not exist stays a link, so the strict build fails on it
  (a broken reference must not pass silently);
* anything else (builtins, torch, private helpers the reference does not show) becomes code;
* a line ending in ``::`` (an reST literal block follows) ends in ``:`` instead.

Enabled in mkdocs.yml (``extensions: [tools/griffe_sphinx_roles.py]``); the pages whose
``::: identifier`` blocks count as rendered are read from ``docs/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import griffe

_LOG = griffe.get_logger("duatm.docs")
# What is left of a role after conversion means a form convert() does not know: the strict
# build must fail on it rather than show raw markup.
LEFTOVER = re.compile(r":(?:py:)?[a-z]+:`")
_ROLES = r":(?:py:)?(?:func|meth|class|attr|data|mod|obj|exc|const):"
ROLE = re.compile(_ROLES + r"`(~?)\.?([\w.]+)`")
# ``:meth:`shown text <duatm.target>``` (the text may wrap onto the next docstring line).
TITLED_ROLE = re.compile(_ROLES + r"`([^`<]+?)\s*<~?\.?([\w.]+)>`")
LITERAL_MARKER = re.compile(r"(?<=\S)::$|^(\s*)::$", re.M)
DIRECTIVE = re.compile(r"^:::\s+([\w.]+)", re.M)
DOCS = Path(__file__).resolve().parents[1] / "docs"


def rendered_identifiers(docs: Path = DOCS) -> set[str]:
    """Every ``::: identifier`` of the docs pages: the objects the reference renders."""
    found: set[str] = set()
    for page in docs.rglob("*.md"):
        found.update(DIRECTIVE.findall(page.read_text(encoding="utf-8")))
    return found


def convert(text: str, link_for: Any) -> str:
    """``text`` with roles replaced by ``link_for(target, display)`` and ``::`` markers fixed."""

    def role(match: re.Match[str]) -> str:
        short, target = match.groups()
        return link_for(target, target.rsplit(".", 1)[-1] if short else target)

    text = TITLED_ROLE.sub(lambda m: link_for(m.group(2), " ".join(m.group(1).split())), text)
    text = ROLE.sub(role, text)
    return LITERAL_MARKER.sub(lambda m: "" if m.group(1) is not None else ":", text)


class SphinxRoles(griffe.Extension):
    """Rewrites docstrings of the whole package once it is loaded (see the module docstring)."""

    def __init__(self, package: str = "duatm") -> None:
        super().__init__()
        self.package = package
        self.rendered = rendered_identifiers()

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **_: Any) -> None:
        if pkg.name != self.package:
            return
        roots = {self._canonical(loader, name): name for name in self.rendered}
        roots.pop(None, None)
        for obj in _walk(pkg):
            if obj.docstring is None:
                continue
            obj.docstring.value = convert(
                obj.docstring.value,
                lambda target, display, obj=obj: self._link(loader, roots, obj, target, display),
            )
            leftover = LEFTOVER.search(obj.docstring.value)
            if leftover:
                _LOG.warning(
                    "%s: docstring markup %r is not understood by %s",
                    obj.path,
                    leftover.group(0),
                    Path(__file__).name,
                )

    def _link(
        self,
        loader: griffe.GriffeLoader,
        roots: dict[str | None, str],
        obj: griffe.Object,
        target: str,
        display: str,
    ) -> str:
        path = _resolve(obj, target)
        if path is None:
            # A full path into the package that does not exist: keep it a link, so the strict
            # build reports it; anything outside the package is plain code.
            explicit = target.split(".", 1)[0] == self.package
            return f"[`{display}`][{target}]" if explicit else f"`{display}`"
        identifier = self._rendered_as(loader, roots, path)
        return f"[`{display}`][{identifier}]" if identifier else f"`{display}`"

    def _rendered_as(
        self, loader: griffe.GriffeLoader, roots: dict[str | None, str], path: str
    ) -> str | None:
        """The identifier under which the reference shows ``path``, or None if it does not."""
        for canonical, identifier in roots.items():
            if canonical is None:
                continue
            if path == canonical:
                return identifier
            if path.startswith(canonical + "."):
                rest = path[len(canonical) + 1 :].split(".")
                node = loader.modules_collection[canonical]
                for name in rest:
                    member = node.members.get(name) if hasattr(node, "members") else None
                    if member is None or name.startswith("_") or member.is_alias:
                        break
                    node = member
                else:
                    if node.docstring is not None:  # members without one are not rendered
                        return f"{identifier}.{'.'.join(rest)}"
        return None

    @staticmethod
    def _canonical(loader: griffe.GriffeLoader, identifier: str) -> str | None:
        return _existing(loader.modules_collection, identifier)


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The canonical path of ``target`` as seen from ``obj``, or None when unknown."""
    first, _, rest = target.partition(".")
    for scope in (obj, obj.module):
        try:
            base = scope.resolve(first)
        except griffe.NameResolutionError:
            continue
        path = f"{base}.{rest}" if rest else base
        return _existing(obj.modules_collection, path)
    return _existing(obj.modules_collection, target)


def _existing(collection: griffe.ModulesCollection, path: str) -> str | None:
    """The canonical path of the object at ``path``, or None when there is none."""
    try:
        found = collection[path]
        return found.final_target.path if found.is_alias else found.path
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)
