"""The README as GitHub shows it: every table renders, with every row as wide as its header."""

from __future__ import annotations

from pathlib import Path

from conftest import markdown_tables

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tables_render():
    """A ``|`` in a cell (``max |Δ|``, ``--precision fp16|int8``) split it, and shifted or hid the row."""
    text = README.read_text()
    expected_tables = sum(1 for line in text.splitlines() if line.lstrip().startswith(("|---", "| ---")))
    tables = markdown_tables(text)
    assert len(tables) == expected_tables
    for rows in tables:
        assert len(set(rows)) == 1, rows
