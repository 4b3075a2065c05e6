"""nesylib: helpers for the NesyCD / SKIntern reproduction notebooks."""
__version__ = "0.1.0"

from nesylib import progress as _progress

# In a notebook kernel without ipywidgets, the first `tqdm.auto` import (transformers, datasets, ...)
# would warn "IProgress not found" into the notebook; settle it on the text bar quietly instead.
_progress.quiet_auto()
