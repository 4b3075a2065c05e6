"""Training: the LoRA SFT engine that trains every student.

- ``engine``: the engine (``train_lora``), on ``transformers.Trainer``.
- ``config``: what a training run is (``TrainConfig``, stages, result, step budget, content key).
- ``backends``: the backend (``pick_backend``), dtype and the model with its LoRA weights.
- ``loss``: the group-weighted response-token cross-entropy.
- ``sft_data``: tokenised training data: sequences, items, item order, batches.
- ``checkpoints``: a run's output folder, its checkpoints and resuming.
- ``adapters``: LoRA adapters on a loaded model: merging, loading and exporting a student.
- ``distributed``: data-parallel training on several processes.
"""
