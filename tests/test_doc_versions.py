"""Every package version the docs name is the installed one (docs drift: they once said the
venv's s3fs was 0.4.2 while 2026.9.0 was installed).

Read from README.md and docs/**/*.md: ``name==X.Y.Z`` pins and "<name> is X.Y.Z" /
"<name> X.Y.Z" phrases for installed distributions. A local build tag (``+cpu``) names another
wheel of the same release and is compared without it.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A pin followed by "/" lists alternatives another package accepts (``==4.8/4.9.*``): a
# requirement quoted, not a claim about this environment.
PIN = re.compile(r"\b([A-Za-z][A-Za-z0-9_.-]*)==(\d+(?:\.\d+)+)(?:\+[\w.]+)?(?![\w./*])")
PHRASE = re.compile(r"\b([A-Za-z][A-Za-z0-9_.-]*)(?: is| version)? (\d+\.\d+\.\d+)\b")


def _docs() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _named_versions() -> list[tuple[str, str, str]]:
    found = []
    for path in _docs():
        text = path.read_text()
        for pattern in (PIN, PHRASE):
            for name, ver in pattern.findall(text):
                try:
                    version(name)
                except PackageNotFoundError:
                    continue  # not a distribution (a file name, a prose word)
                found.append((str(path.relative_to(REPO)), name, ver))
    return sorted(set(found))


def test_the_docs_name_some_versions_and_the_check_can_fail() -> None:
    names = {name for _, name, _ in _named_versions()}
    assert "torch" in names  # the README's install section pins it
    assert PHRASE.findall("The venv's s3fs is 0.4.2") == [("s3fs", "0.4.2")]
    assert PIN.findall("`torch==2.14.1`, `antlr4-python3-runtime==4.8/4.9.*`") == [
        ("torch", "2.14.1")
    ]


@pytest.mark.parametrize(("doc", "name", "named"), _named_versions())
def test_a_version_in_the_docs_is_the_installed_one(doc: str, name: str, named: str) -> None:
    installed = version(name).split("+")[0]
    assert installed == named, f"{doc} names {name} {named}; installed is {installed}"
