"""Methods: every student method's prompts, training data and the steps that make a distillation method.

- ``catalog``: every method defined once (``Lab``), for the real benchmarks and the synthetic one.
- ``prompts``: every student prompt format.
- ``formats``: supervised training examples per method.
- ``students``: train and evaluate one student method.
- ``nesycd``: NesyCD's data steps between its trained students.
- ``skintern``: SKIntern's per-stage training data.
- ``curriculum``: SKIntern's schedule of knowledge and demonstrations per stage.
- ``demos``: demonstrations for stage prompts, and fitting a prompt into the context.
- ``compress``: token-level knowledge compression for SKIntern's stages.
"""
