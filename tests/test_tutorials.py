"""The tutorials: jupytext sources (``tutorials/NN_*.py``) paired with executed notebooks (``.ipynb``).

* every ``.py`` source has its notebook and the two hold the same cells (jupytext reads the
  source; cell types and sources are compared, outputs and metadata are not);
* the committed notebooks carry their outputs, from a run in which no cell raised;
* every tutorial still runs: its ``.py`` source is executed in a Jupyter kernel of this very
  interpreter, the ``python3`` kernel spec that ipykernel installs into the environment
  (``<sys.prefix>/share/jupyter/kernels/python3``), whose ``python`` command jupyter_client replaces
  by ``sys.executable``. A first cell, added here and not in the tutorial, checks that the kernel's
  ``sys.prefix`` is the test's. The tutorials run with the tutorials folder as their working
  directory and write only to temporary folders.

``python tutorials/execute.py`` refreshes the notebooks from the sources (see tutorials/README.md).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(p.name for p in TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
SOURCES = sorted(p.name for p in TUTORIALS.glob("[0-9][0-9]_*.py"))
KERNEL_CHECK = "import json, sys\nprint(json.dumps({'prefix': sys.prefix, 'executable': sys.executable}))"
# tutorials measured over 30 s on a loaded 2-core machine: only in the full (not "not slow") run
SLOW = {"01_elfa_digits.py", "02_pcace.py", "03_analyze.py", "04_bring_your_own_model.py"}
REFRESH = "refresh it with `python tutorials/execute.py NAME` (see tutorials/README.md)"


def _python3_kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no 'python3' Jupyter kernel spec (install ipykernel in this environment)")
    if spec.argv[0] not in (
        "python",
        f"python{sys.version_info[0]}",
        f"python{sys.version_info[0]}.{sys.version_info[1]}",
        sys.executable,
    ):
        pytest.skip(f"the 'python3' kernel spec runs {spec.argv[0]!r}, not this interpreter ({sys.executable})")
    return "python3"


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip("\n")) for c in nb.cells]


def test_tutorials_found() -> None:
    assert len(SOURCES) >= 5, f"expected the tutorial sources in {TUTORIALS}, found {SOURCES}"
    stems = {Path(n).stem for n in SOURCES}
    assert stems == {Path(n).stem for n in NOTEBOOKS}, (
        f"every tutorial is a pair NN_name.py + NN_name.ipynb; sources {SOURCES}, notebooks {NOTEBOOKS}"
    )


@pytest.mark.parametrize("name", SOURCES)
def test_source_and_notebook_in_sync(name: str) -> None:
    source = jupytext.read(TUTORIALS / name)
    notebook = nbformat.read(TUTORIALS / name.replace(".py", ".ipynb"), as_version=4)
    for nb, what in ((source, name), (notebook, name.replace(".py", ".ipynb"))):
        formats = nb.metadata.get("jupytext", {}).get("formats")
        assert formats == "ipynb,py:percent", f"{what}: jupytext pairing is {formats!r}, expected 'ipynb,py:percent'"
    src, ipynb = _cells(source), _cells(notebook)
    assert len(src) == len(ipynb), f"{name} has {len(src)} cells, its notebook {len(ipynb)}: {REFRESH}"
    for i, (a, b) in enumerate(zip(src, ipynb)):
        assert a == b, f"{name}: cell {i} differs from the notebook's ({a[0]} vs {b[0]}): {REFRESH}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_committed_with_outputs_and_no_errors(name: str) -> None:
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    # one run from the top: cells numbered 1, 2, 3, ... (a cell that raised stops the run)
    assert counts == list(range(1, len(code) + 1)), f"{name} is not executed from the top (counts {counts}): {REFRESH}"
    assert any(c.outputs for c in code), f"{name} has no outputs: {REFRESH}"
    for i, c in enumerate(code):
        for o in c.outputs:
            assert o.output_type != "error", f"{name}: code cell {i} holds an error {o.ename}: {o.evalue}"
            text = o.get("text", "") if o.output_type == "stream" else o.get("data", {}).get("text/plain", "")
            assert "Traceback (most recent call last)" not in text, f"{name}: code cell {i} printed a traceback"
            assert str(ROOT) not in text, f"{name}: code cell {i} prints a path of this checkout ({ROOT})"


def _run(name: str) -> None:
    kernel = _python3_kernel()
    nb = jupytext.read(TUTORIALS / name)
    nb.cells.insert(0, nbformat.v4.new_code_cell(KERNEL_CHECK))
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name=kernel, resources={"metadata": {"path": str(TUTORIALS)}}
    )
    before = set(os.listdir(TUTORIALS))
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:  # the message holds the cell and traceback
        pytest.fail(f"{name}: a cell raised\n{e}", pytrace=False)
    elapsed = time.perf_counter() - start
    print(f"{name} executed in {elapsed:.1f} s")

    check = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.output_type == "stream")
    info = json.loads(check.strip().splitlines()[-1])
    assert os.path.realpath(info["prefix"]) == os.path.realpath(sys.prefix), (
        f"the notebook ran in {info['executable']}, not in this environment's {sys.executable}"
    )
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    # source files (notebooks, scripts, text) may be added by hand meanwhile; anything else is output
    written = {f for f in set(os.listdir(TUTORIALS)) - before if not f.endswith((".ipynb", ".py", ".md", ".toml"))}
    assert not written, f"{name} wrote {sorted(written)} into {TUTORIALS}; notebooks must write to temporary folders"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in SOURCES])
def test_tutorial_runs(name: str) -> None:
    _run(name)
