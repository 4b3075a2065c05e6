"""Evaluation: scoring a student on the benchmarks and counting its cost.

- ``evaluate``: the runner (task specs, generation, scoring, sample logs).
- ``cache``: a student's evaluation stored and reused when the same student gets the same prompts.
- ``extract``: answer extraction and the judges.
- ``metrics``: accuracy tables with bootstrap intervals, ID/OOD averages.
- ``flops``: inference compute accounting.
"""
