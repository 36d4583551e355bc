"""Write each tutorial's ``.ipynb`` from its jupytext source (``NN_*.py``) and execute it in place.

    python tutorials/execute.py                      # every tutorial
    python tutorials/execute.py 01_elfa_digits.py    # some of them

The ``.py`` file is the source: edit it (or the notebook, then ``jupytext --sync``), and run this
to refresh the committed notebook with its outputs. The notebook runs in the ``python3`` Jupyter
kernel of this interpreter, with the tutorials folder as working directory. Cells get stable ids
(``cell-00``, ``cell-01``, ...) and no execution timestamps, so a re-run changes only what the
outputs change. A cell that raises stops the run with the traceback; its notebook is not written.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import jupytext
import nbclient

HERE = Path(__file__).resolve().parent
FORMATS = "ipynb,py:percent"


def execute(source: Path) -> float:
    """Execute ``source`` (a ``NN_*.py`` tutorial) and write its ``.ipynb``; return the seconds it took."""
    nb = jupytext.read(source)
    nb.metadata.setdefault("jupytext", {})["formats"] = FORMATS
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    start = time.perf_counter()
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", record_timing=False, resources={"metadata": {"path": str(HERE)}}
    )
    client.execute()
    seconds = time.perf_counter() - start
    nb.metadata.pop("widgets", None)
    jupytext.write(nb, source.with_suffix(".ipynb"), fmt="ipynb")
    return seconds


def main(names: list[str]) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sources = [HERE / n for n in names] if names else sorted(HERE.glob("[0-9][0-9]_*.py"))
    for source in sources:
        print(f"{source.name}: executed in {execute(source):.1f} s -> {source.with_suffix('.ipynb').name}")


if __name__ == "__main__":
    main(sys.argv[1:])
