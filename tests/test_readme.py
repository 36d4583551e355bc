"""The README's example and the quickstart run as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_example_runs():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["efam"].shape == (8, 1, 8, 8)
    assert ns["scores"].shape == (24,)
    assert ns["rgb"].shape == (4, 8, 8, 3)


def test_quickstart_script(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "PCACE top channels" in out.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["elfa"]["n_factors"] >= 1 and len(report["pcace"]["scores"]) == 32
