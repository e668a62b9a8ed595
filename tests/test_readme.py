"""The README's examples run as written (a user copies them first)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_every_python_example_runs(tmp_path: Path) -> None:
    """Seen by a new user: the Python example did not run (`async with` outside a function),
    and its `# 3, "REPEAT"` could not happen with a fixed occurrence_id."""
    blocks = _python_blocks()
    assert blocks, "the README has Python examples"
    for number, block in enumerate(blocks, start=1):
        script = tmp_path / f"example{number}.py"
        script.write_text(block, encoding="utf-8")
        done = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"example {number}:\n{done.stderr}"
        if "# 3 REPEAT" in block:  # (what its comments say it prints, it prints)
            lines = done.stdout.splitlines()
            assert "3 REPEAT" in lines, done.stdout
            assert lines[lines.index("3 REPEAT") + 1] == "REPEAT", done.stdout
