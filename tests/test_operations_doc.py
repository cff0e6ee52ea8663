"""docs/operations.md names a test for every bad-input kind of issue 13: each must exist."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
TABLE_HEADING = "### Every bad-input kind of issue 13"


def _named_tests() -> list[str]:
    """The ``tests/test_x.py::test_name`` ids in the last column of the table."""
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text.split(TABLE_HEADING, 1)[1].split("\n\n", 2)[2]
    rows = [line for line in table.split("\n\n")[0].splitlines() if line.startswith("|")][2:]
    ids = [re.fullmatch(r"`([^`]+)`", row.rstrip("|").rsplit("|", 1)[1].strip()) for row in rows]
    assert all(ids), [row for row, m in zip(rows, ids, strict=True) if not m]
    return [m.group(1) for m in ids]


def _defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_test_the_operations_table_names_exists():
    named = _named_tests()
    assert len(named) >= 30
    missing = []
    for test_id in named:
        file, _, name = test_id.partition("::")
        path = ROOT / file
        if not path.is_file() or name not in _defined_tests(path):
            missing.append(test_id)
    assert not missing, f"docs/operations.md names tests that do not exist: {missing}"
