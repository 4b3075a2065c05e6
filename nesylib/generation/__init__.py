"""Generation: the engines that decode a student's answers for evaluation.

- ``generate``: batched decoding, the transformers engine (``generate_batch``).
- ``decode``: the transformers engine's own decode loop.
- ``stopping``: the stop rule every engine shares.
- ``vllm_engine``: vLLM behind the same signature, for GPU machines.
- ``engines``: the engines by name ("hf", "vllm", "auto").
"""
