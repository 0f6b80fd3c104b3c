"""The project stands alone: its contracts are in `docs/`, and nothing cites documents outside
the repository."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines import cli

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ("cli.md", "model-file.md", "data.md", "outputs.md")
# Built from parts, so that this file does not contain what it looks for.
FOREIGN = ("DESIGN " + "§", "../" + "shared", "/work/" + "shared")


def _tracked() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    return [ROOT / n.decode() for n in names if n]


def _foreign_references(paths: list[Path], root: Path) -> list[str]:
    """`FILE:LINE: needle` for every file outside `docs/` that mentions a foreign document."""
    found = []
    for path in paths:
        rel = path.relative_to(root).as_posix()
        if rel.startswith("docs/") or not path.is_file():
            continue
        text = path.read_bytes()
        for needle in FOREIGN:
            if needle.encode() in text:
                line = text[: text.index(needle.encode())].count(b"\n") + 1
                found.append(f"{rel}:{line}: {needle!r}")
    return found


def test_no_tracked_file_outside_docs_cites_documents_outside_the_repository():
    found = _foreign_references(_tracked(), ROOT)
    assert not found, "references to documents outside the repository:\n" + "\n".join(found)


def test_the_check_finds_a_citation(tmp_path):
    (tmp_path / "docs").mkdir()
    cited = tmp_path / "m.py"
    cited.write_text('"""Loading.\n\nAs in DESIGN \u00a72."""\n', encoding="utf-8")
    (tmp_path / "ok.py").write_text("# see docs/data.md\n")
    (tmp_path / "docs" / "x.md").write_text(FOREIGN[1] + "\n")
    paths = [cited, tmp_path / "ok.py", tmp_path / "docs" / "x.md"]
    assert _foreign_references(paths, tmp_path) == ["m.py:3: 'DESIGN \u00a7'"]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_subcommand_and_option_is_in_docs_cli():
    doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^### `sciml (\S+)", doc, flags=re.MULTILINE))
    commands = _subcommands()
    assert len(commands) >= 9
    missing = sorted(set(commands) - headings)
    assert not missing, f"docs/cli.md has no section for: {missing}"
    undocumented = [
        f"sciml {name} {option}"
        for name, parser in commands.items()
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help" and f"`{option}" not in doc
    ]
    assert not undocumented, f"options missing from docs/cli.md: {undocumented}"


def test_contract_docs_exist_and_the_readme_links_them():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in CONTRACTS:
        assert (ROOT / "docs" / name).is_file(), name
        assert f"(docs/{name})" in readme, f"README.md does not link docs/{name}"


def test_links_between_docs_resolve():
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", page.read_text("utf-8")):
            assert (page.parent / target).is_file(), f"{page.name} links a missing {target}"
