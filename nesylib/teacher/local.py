"""Backend for a local transformers chat model (offline default: SmolLM2-135M-Instruct).

Prompts are rendered with the model's own chat template (system + user message, generation
prompt appended); a model without a template gets ``system\\n\\nprompt``. Requests are
generated in left-padded batches of ``batch_size`` that share their sampling parameters.
Greedy decoding (temperature 0) is deterministic; sampling is seeded per batch from the
requests' (seed, sample index, prompt), so a re-run of the same batch draws the same text.
The model is loaded on the first call, so a teacher whose calls are all stored never loads it.
"""
from __future__ import annotations

import hashlib

from nesylib.teacher.base import TeacherReply, TeacherRequest


class LocalBackend:
    """``Teacher`` over ``nesylib.models.load_model(model)``; free, one batch at a time."""

    backend = "local"
    parallel = False   # one model instance: batches run one after another
    paid = False

    def __init__(self, model: str = "smollm2-135m", batch_size: int = 8, dtype: str = "float32",
                 device: str | None = None, seed: int = 0):
        self.model = model
        self.name = f"local:{model}"
        self.batch_size = batch_size
        self.dtype, self.device, self.seed = dtype, device, seed
        self._lm = None
        self._tok = None

    def _load(self):
        if self._lm is None:
            from nesylib.models import load_model

            self._lm, self._tok = load_model(self.model, dtype=self.dtype, device=self.device)
        return self._lm, self._tok

    def render(self, req: TeacherRequest) -> str:
        """The exact text the model sees for ``req`` (chat template applied)."""
        _, tok = self._load()
        messages = ([{"role": "system", "content": req.system}] if req.system else []) + \
                   [{"role": "user", "content": req.prompt}]
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return (req.system + "\n\n" if req.system else "") + req.prompt

    def complete(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        out: list[TeacherReply | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.temperature, r.top_p, r.max_tokens), []).append(i)
        for (temp, top_p, max_tokens), idx in groups.items():
            for s in range(0, len(idx), self.batch_size):
                part = idx[s:s + self.batch_size]
                for i, rep in zip(part, self._generate([requests[i] for i in part], temp, top_p, max_tokens)):
                    out[i] = rep
        return out  # type: ignore[return-value]

    def _generate(self, reqs: list[TeacherRequest], temp: float, top_p: float, max_tokens: int):
        import torch

        lm, tok = self._load()
        texts = [self.render(r) for r in reqs]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
        kw = {"max_new_tokens": max_tokens, "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
        if temp > 0:
            kw.update(do_sample=True, temperature=temp, top_p=top_p, top_k=0)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        tag = "|".join(f"{r.extra.get('seed', self.seed)}:{r.sample_index}:{r.prompt}" for r in reqs)
        batch_seed = int.from_bytes(hashlib.sha256(tag.encode("utf-8")).digest()[:8], "little")
        devices = [lm.device.index or 0] if lm.device.type == "cuda" else []  # CUDA device ids
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(batch_seed)  # seeded without touching the caller's RNG state
            gen = lm.generate(**enc, **kw)
        new = gen[:, enc["input_ids"].shape[1]:]
        replies = []
        for row, mask in zip(new, enc["attention_mask"]):
            ids = row.tolist()
            stop = next((j for j, t in enumerate(ids) if t == tok.eos_token_id), None)
            kept = ids[:stop] if stop is not None else ids
            if stop is None and tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id:
                kept = [t for t in kept if t != tok.pad_token_id]
            text = tok.decode(kept, skip_special_tokens=True)
            replies.append(TeacherReply(text=text, ok=True, prompt_tokens=int(mask.sum()),
                                        completion_tokens=len(kept) + (stop is not None),
                                        finish_reason="stop" if stop is not None else "length"))
        return replies
