"""The README's example and the quickstart run as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_example_runs():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    ns: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(code, "README.md", "exec"), ns)
    # the default run raises no alarm it cannot justify: no caution of the fit is issued
    alarms = [str(w.message) for w in caught if "layer '" in str(w.message)]
    kinds = [c["kind"] for c in ns["lfa"].report()["cautions"]]
    assert len(alarms) == len(kinds) and set(kinds) <= {"heywood"}, alarms  # a real boundary optimum at most
    assert ns["lfa"].converged_
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
    # the quickstart's default run prints no alarm it cannot justify: at most a real Heywood case
    assert all(
        "Heywood case: at the likelihood optimum" in line for line in out.stderr.splitlines() if "Warning" in line
    ), out.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["elfa"]["n_factors"] >= 1 and len(report["pcace"]["scores"]) == 32
