"""The README's code runs as pasted: a newcomer's first copy must not raise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_a_python_quickstart():
    assert python_blocks(), "README lost its Python quickstart"


def test_every_python_block_runs_in_a_fresh_interpreter(tmp_path):
    printed = []
    for number, block in enumerate(python_blocks()):
        script = tmp_path / f"block{number}.py"
        script.write_text(block)
        # a fresh interpreter, so nothing imported by the test session hides a missing import
        run = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, f"README block {number} failed:\n{run.stderr[-2000:]}"
        printed.append(run.stdout)
    # the two-lines block shows what it patched: the final four of the reference model's six
    assert "layers=[2, 3, 4, 5] of 6" in "".join(printed)
