"""A generated, knowledge-sparse benchmark and its programmatic teacher.

world.py holds the parameters (``SynthConfig``, with the rationale for every default), the
invented world and the solver; bench.py draws the train / test / ood splits and reads and
writes them; teacher.py is the programmatic teacher (CoT, error analysis, knowledge).

    from nesylib.synth import SynthConfig, generate_world, generate_benchmark, SynthTeacher
    world = generate_world(SynthConfig())            # seed 42 defaults
    splits = generate_benchmark(world.config, world)  # {"train": [...], "test": [...], "ood": [...]}
    teacher = SynthTeacher(world)                     # answers only about train records
"""
from nesylib.synth.bench import (DESCRIPTIONS, SPLITS, TEMPLATES, describe, generate_benchmark, load_benchmark,
                                 load_world, save_benchmark)
from nesylib.synth.teacher import SynthTeacher, cot_prompt, rationale_records
from nesylib.synth.world import TASKS, VARIANTS, Solution, SynthConfig, World, generate_world, solve

__all__ = ["DESCRIPTIONS", "SPLITS", "TASKS", "TEMPLATES", "VARIANTS", "Solution", "SynthConfig", "SynthTeacher",
           "World", "cot_prompt", "describe", "generate_benchmark", "generate_world", "load_benchmark",
           "load_world", "rationale_records", "save_benchmark", "solve"]
