"""Sphinx configuration of the captum-elfa documentation.

    sphinx-build -W --keep-going -b html docs docs/_build/html      # or: bash .ci/docs

The API pages (``api/*.rst``) and the tutorial pages (``tutorials/*.ipynb``) are generated here at
every build, from the package's modules and from the committed, executed notebooks in the
repository's ``tutorials/`` folder; both folders are ignored by git. The notebooks are rendered
with their committed outputs (myst-nb, execution off): nothing is executed by the build.
"""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import captum_elfa  # noqa: E402

project = "captum-elfa"
author = "captum-elfa contributors"
copyright = "captum-elfa contributors (BSD-3-Clause)"
release = captum_elfa.__version__
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode", "myst_nb"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
html_theme = "alabaster"
html_title = f"captum-elfa {release}"

# autodoc / napoleon: Captum-style Google docstrings ("Args:", "Returns:", "Examples::")
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" sections as fields, not duplicate attribute entries

# myst-nb: the notebooks are committed executed; the docs render their outputs as they are
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath"]

# ------------------------------------------------------------------------------------------------
# generated pages
# ------------------------------------------------------------------------------------------------
# (page, title, package or module); a package page documents each public submodule
API_PAGES = [
    ("attr", "captum_elfa.attr: attribution classes", "captum_elfa.attr"),
    ("stats", "captum_elfa.stats: statistics", "captum_elfa.stats"),
    ("visualization", "captum_elfa.visualization: figures and heatmaps", "captum_elfa.visualization"),
    ("metrics", "captum_elfa.metrics: faithfulness", "captum_elfa.metrics"),
    ("optim", "captum_elfa.optim: image synthesis", "captum_elfa.optim"),
    ("report", "captum_elfa.report: HTML reports", "captum_elfa.report"),
    ("insights", "captum_elfa.insights: Captum Insights", "captum_elfa.insights"),
    ("demo", "captum_elfa.demo: the digits CNN", "captum_elfa.demo"),
]


def _public_submodules(package: str) -> list[str]:
    mod = importlib.import_module(package)
    if not hasattr(mod, "__path__"):
        return []
    out: list[str] = []
    for info in pkgutil.iter_modules(mod.__path__):
        if info.name.startswith("_"):
            continue
        name = f"{package}.{info.name}"
        out.append(name)
        if info.ispkg:  # a subpackage (attr.analyzers): its public modules too
            out += _public_submodules(name)
    return sorted(out)


def _heading(text: str, char: str) -> str:
    return f"{text}\n{char * len(text)}\n"


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _module_docstring(module: str) -> str:
    """The docstring of a module that cannot be imported here, read from its source."""
    path = ROOT / (module.replace(".", os.sep) + ".py")
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


def _write_api_pages() -> None:
    out = HERE / "api"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for page, title, module in API_PAGES:
        lines = [_heading(title, "="), ""]
        if not _importable(module):
            # captum_elfa.insights needs captum < 0.9: on a newer captum it raises ImportError on import
            import captum

            lines += [
                f".. note:: ``{module}`` cannot be imported with captum {captum.__version__} (Captum Insights "
                "was removed in captum 0.9), so this page shows its module docstring only. Build the "
                "documentation in an environment with captum < 0.9 for the full reference.",
                "",
                ".. py:module:: " + module,
                "",
                _module_docstring(module),
                "",
            ]
        else:
            subs = _public_submodules(module)
            lines += [f".. automodule:: {module}", "   :no-members:" if subs else "", ""]
            for sub in subs:
                # members defined in the module only: a package or module that re-exports
                # (attr.analyze, attr.analyzers) would document the same classes twice
                lines += [_heading(sub, "-"), f".. automodule:: {sub}", "   :ignore-module-all:", ""]
        (out / f"{page}.rst").write_text("\n".join(lines), encoding="utf-8")


def _write_api_index() -> None:
    """``api/index.rst``: the top-level names, each linked to where it is documented."""
    lines = [
        _heading("API reference", "="),
        "",
        "The top-level package ``captum_elfa`` re-exports these names "
        "(``from captum_elfa import LayerFactorAnalysis``):",
        "",
    ]
    private = []
    for name in captum_elfa.__all__:
        obj = getattr(captum_elfa, name)
        module = getattr(obj, "__module__", None)
        if name.startswith("__") or not isinstance(module, str):
            continue
        if any(part.startswith("_") for part in module.split(".")):
            private.append(name)  # defined in a private module: documented right here
            continue
        role = "class" if isinstance(obj, type) else "func"
        lines.append(f"* :{role}:`{name} <{module}.{name}>`")
    lines += ["", ".. toctree::", "   :maxdepth: 2", ""] + [f"   {page}" for page, _, _ in API_PAGES] + [""]
    if private:
        lines += [_heading("Errors and other shared names", "-"), ""]
        for name in private:
            obj = getattr(captum_elfa, name)
            directive = "autoexception" if isinstance(obj, type) and issubclass(obj, BaseException) else "autoclass"
            lines += [f".. {directive}:: captum_elfa.{name}", ""]
    (HERE / "api" / "index.rst").write_text("\n".join(lines), encoding="utf-8")


def _copy_tutorials() -> None:
    out = HERE / "tutorials"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for nb in sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.ipynb")):
        shutil.copy2(nb, out / nb.name)


_write_api_pages()
_write_api_index()
_copy_tutorials()
