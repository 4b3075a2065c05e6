"""Tables, figures and captions of a finished run, read from its notebooks' results.json files alone.

In four modules, in the order the data flows: ``collect`` (reading and checking the files, model sizes),
``tables``, ``figures`` and ``captions`` (with ``draw_all``, which saves each figure beside its caption).
Everything public is importable from ``nesylib.report`` itself.

Input layout: ``<dir>/<stem>/results.json`` (with ``params.json`` and ``env.json`` beside it), which is
both a run folder ``results/runs/<preset>/`` and its exported copy ``results/<preset>/``. Nothing here
loads a model or recomputes an accuracy: every number comes from those files, and a notebook whose
results are absent is listed in the report's notes rather than filled in.

* ``main_table``: one row per real-benchmark method (the ``rows`` of 03, 04 and 05; a method found in
  two notebooks keeps the first one in notebook order), accuracy with 95% CIs per dataset, ID/OOD
  averages, no-answer rate and inference FLOPs.
* ``flops_points``: the same methods as (FLOPs per item, ID or OOD accuracy) points, one series per student.
* ``synthetic_table``: notebook 08's rows per split; ``ablation_table``: notebook 06's sweeps.
* ``fig_*`` draw them (matplotlib ``Figure`` objects, no pyplot state); ``caption`` writes what a figure
  shows and cannot show from the results' own metadata; ``draw_all`` saves PNG + caption pairs.
* ``write_csv`` writes any table with plain numbers in its cells (a ``[low, high]`` column becomes
  ``<name>_low`` and ``<name>_high``), so that a CSV reader gets numbers, not list text.
"""
from __future__ import annotations

from nesylib.report.collect import (  # noqa: F401
    MAIN_SOURCES,
    ABLATIONS,
    SYNTHETIC,
    ROLES,
    FIGURES,
    SWEEP_KEYS,
    NotebookResult,
    Collected,
    collect,
    model_size,
    format_size,
)
from nesylib.report.tables import (  # noqa: F401
    datasets_of,
    main_table,
    main_table_markdown,
    flops_points,
    synthetic_table,
    ablation_table,
    Report,
    build_report,
    flat_table,
    write_csv,
    records,
    write_tables,
)
from nesylib.report.figures import (  # noqa: F401
    fig_accuracy_vs_flops,
    fig_main_bars,
    fig_synthetic,
    fig_ablations,
)
from nesylib.report.captions import (  # noqa: F401
    caption,
    save_figure,
    draw_all,
)
