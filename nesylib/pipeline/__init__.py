"""Runs: the notebooks as one pipeline, their parameters and run folders.

- ``runner``: which notebooks run in which order, their cache keys, executing them (``nesylib run``).
- ``runs``: a notebook's run folder, params/env capture and results files (``start``, ``RunContext``).
- ``param_model``: every notebook's parameters, declared once.
- ``params``: describing a notebook's parameters and applying ``--set`` overrides to a preset.
- ``nbexec``: the papermill engine the runner executes notebooks with.
- ``experiment``: what the notebooks of a preset share: item selection and hand-offs between notebooks.
"""
