"""Progress bars that suit where the code runs: a widget bar in a notebook front-end that can draw one,
the plain text bar everywhere else.

``tqdm.auto`` picks the widget bar in any Jupyter kernel and, when ``ipywidgets`` is not installed (it
is not in the pinned stack), falls back to the text bar only after warning "IProgress not found" into
the notebook's output. nesylib code uses ``nesylib.progress.tqdm``, which makes that choice without
the warning; ``quiet_auto`` (called by ``import nesylib`` inside a kernel) makes ``tqdm.auto`` itself,
imported later by transformers, datasets or huggingface_hub, choose the same way without warning.
"""
from __future__ import annotations

import importlib.util
import sys
import warnings


def in_kernel() -> bool:
    """True inside a Jupyter kernel (papermill's included), where ``tqdm.auto`` would want widgets."""
    return "ipykernel.zmqshell" in sys.modules


def widgets_available() -> bool:
    return importlib.util.find_spec("ipywidgets") is not None


def tqdm_class() -> type:
    """The notebook (widget) bar in a kernel that has ipywidgets, else the plain text bar."""
    if in_kernel() and widgets_available():
        from tqdm.auto import tqdm as bar
    else:
        from tqdm.std import tqdm as bar
    return bar


def tqdm(*args, **kwargs):
    """A progress bar of ``tqdm_class()``; the arguments are tqdm's."""
    return tqdm_class()(*args, **kwargs)


def quiet_auto() -> None:
    """Import ``tqdm.autonotebook`` (which ``tqdm.auto`` imports) with its "IProgress not found"
    warning silenced: it then settles on the text bar once, and every later ``tqdm.auto`` import
    reuses that choice without warning. Other warnings pass; with ipywidgets there is nothing to do."""
    if "tqdm.autonotebook" in sys.modules or not in_kernel() or widgets_available():
        return
    from tqdm.notebook import WARN_NOIPYW
    from tqdm.std import TqdmWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=WARN_NOIPYW.split(".")[0], category=TqdmWarning)
        import tqdm.autonotebook  # noqa: F401
