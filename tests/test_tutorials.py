"""Execute every tutorial notebook (``tutorials/NN_*.ipynb``) and fail on any cell error.

The notebooks run in a Jupyter kernel of this very interpreter: the ``python3`` kernel spec that
ipykernel installs into the environment (``<sys.prefix>/share/jupyter/kernels/python3``), whose
``python`` command jupyter_client replaces by ``sys.executable``. A first cell, added here and not
in the notebook, checks that the kernel's ``sys.prefix`` is the test's. The notebooks run with the
tutorials folder as their working directory and write only to temporary folders.
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
pytest.importorskip("ipykernel")

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(p.name for p in TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
KERNEL_CHECK = "import json, sys\nprint(json.dumps({'prefix': sys.prefix, 'executable': sys.executable}))"


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


def test_notebooks_found() -> None:
    assert len(NOTEBOOKS) >= 4, f"expected the tutorial notebooks in {TUTORIALS}, found {NOTEBOOKS}"


def test_notebooks_are_committed_without_outputs() -> None:
    for name in NOTEBOOKS:
        nb = nbformat.read(TUTORIALS / name, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, (
                    f"{name} has outputs; regenerate it with tutorials/_build.py"
                )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_tutorial_runs(name: str) -> None:
    kernel = _python3_kernel()
    nb = nbformat.read(TUTORIALS / name, as_version=4)
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
    written = {f for f in set(os.listdir(TUTORIALS)) - before if not f.endswith((".ipynb", ".py", ".md"))}
    assert not written, f"{name} wrote {sorted(written)} into {TUTORIALS}; notebooks must write to temporary folders"
