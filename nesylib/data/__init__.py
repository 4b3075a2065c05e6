"""Data and sources: the benchmarks as records, where their pinned files come from, and datasets of one's own.

- ``benchmarks``: the loaders (BBH, GSM8K, AGIEval, ARC, GSM-Plus) -> one record schema; the BBH split
  (manifest in ``splits/``).
- ``sources``: the registry of pinned upstream files (checksums in ``SHA256SUMS``), fetching and verifying them.
- ``custom_data``: a dataset of one's own defined by a YAML entry (a preset's ``datasets:`` section).
- ``custom_records``: such a dataset's rows read and converted into records.
"""
