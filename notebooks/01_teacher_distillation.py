# %% [markdown]
# # 01 · Teacher distillation: the rationale dataset every student trains on
#
# A teacher writes a chain of thought ending in `Therefore, the answer is X.` for each training question;
# only rationales whose answer matches the gold answer are kept (CasCoD's "right answer" filter, D2).
#
# * `teacher_backend="replay"` (the cpu default, no network): BBH uses the recorded Codex CoTs, rewritten
#   to the marker (D2); GSM8K uses its human reference solutions, rewritten the same way (D3, a deviation).
# * `teacher_backend="openai"`: any OpenAI-compatible endpoint (OpenAI, a vLLM or llama.cpp server) via
#   `teacher_base_url` and `teacher_model`; the key is read from the environment variable named by
#   `api_key_env` and is never written anywhere. Every call goes through a persistent store: re-running is
#   free, a crash loses nothing paid for, and the store file can be shared (by default under
#   `<run_root>/stores/`, outside the run folder, so a failed or forced re-run finds every paid call).
#   An unreachable endpoint stops the notebook within a few calls; calls still failed after their
#   retries (or items with no reply at all) stop it after the accepted rationales are saved, and a re-run
#   asks exactly those calls again.
# * `teacher_backend="local"`: a local transformers chat model.
#
# `train_datasets` lists the sets taught; a dataset of your own (README, "Your own dataset") needs a live
# teacher (`openai` or `local`): the replay teacher has recorded rationales for BBH and GSM8K only.

# %% tags=["parameters"]
# parameters
from typing import Optional
preset: str = "adhoc"
run_root: Optional[str] = None
data_dir: Optional[str] = None
seed: int = 42
bbh_tasks: Optional[list] = None         # None: all 27 tasks
train_per_task: Optional[int] = None     # None: every BBH train item
gsm8k_train: Optional[int] = None        # None: all 7473 items; 0 excludes GSM8K
train_datasets: list = ["bbh", "gsm8k"]  # sets taught: bbh and gsm8k as above, others at most train_per_task per task
teacher_backend: str = "replay"          # openai | local | replay
teacher_model: str = "auto"              # replay: auto | codex | gsm8k; openai/local: the model name
teacher_base_url: Optional[str] = None   # openai: e.g. http://localhost:8000/v1 for a vLLM server
api_key_env: str = "OPENAI_API_KEY"      # the environment variable that holds the API key
store_path: Optional[str] = None         # None: <run_root>/stores/01_teacher_distillation/teacher_store.jsonl
concurrency: int = 8                     # calls in flight at once
budget_usd: Optional[float] = None       # stop new paid teacher calls beyond this spend (needs price_in_out)
price_in_out: Optional[list] = None      # [USD per 1M input tokens, USD per 1M output tokens] of teacher_model
max_retries: int = 6                     # extra attempts for any failed call (429/5xx, timeout, malformed or empty reply)
# CasCoD's sampling schedule: 2 samples at T 0.2, then one more sample and T + 0.1 per round
max_rounds: int = 4

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from nesylib.pipeline import experiment, param_model
from nesylib.teacher import SampleSchedule, generate_rationales, replay_rationales, teacher_from_params
from nesylib.teacher.cot import check_complete

ctx = param_model.start("01_teacher_distillation", globals())
train = experiment.select_train(bbh_tasks, train_per_task, gsm8k_train, seed, data_dir, train_datasets)
print(f"{len(train)} training questions")

# %%
if teacher_backend == "replay":
    rset = replay_rationales(train, teacher_model, data_dir=data_dir)
    summary = {"calls": 0, "cost_usd": 0.0, "note": "recorded outputs: no calls"}
else:
    prices = {teacher_model: price_in_out} if price_in_out else None
    teacher = teacher_from_params(teacher_backend, teacher_model, base_url=teacher_base_url, api_key_env=api_key_env,
                                  store_path=store_path or ctx.store("teacher_store.jsonl"), concurrency=concurrency,
                                  budget_usd=budget_usd, price_table=prices, max_retries=max_retries)
    rset = generate_rationales(train, teacher, schedule=SampleSchedule(max_rounds=max_rounds), seed=seed,
                               progress=print)
    print(teacher.summary)
    summary = teacher.summary.as_dict()
rset.save(experiment.rationale_file(ctx.dir))
if teacher_backend != "replay":
    check_complete(rset, teacher.summary)  # unresolved calls or items without any reply: stop, naming how many
table = pd.DataFrame(rset.table())
table

# %% [markdown]
# ## Acceptance per task

# %%
fig, ax = plt.subplots(figsize=(8, max(3, 0.28 * len(table))))
sns.barplot(data=table[table.task != "all"], y="task", x="rate", ax=ax, color="tab:blue")
ax.set_xlabel("share of questions with an accepted rationale")
ax.set_title(f"Teacher: {rset.teacher}")
fig.tight_layout()
fig.savefig(ctx.path("acceptance.png"), dpi=120)
plt.show()

# %%
ex = rset.records[0]
print(ex["uid"], "| gold:", ex["answer"])
print(ex["question"][:400])
print("--- rationale ---")
print(ex["rationale"])

# %%
tot = rset.totals()
ctx.save_results({"teacher": rset.teacher, "prompt_version": rset.prompt_version, "items": tot.items,
                  "accepted": tot.accepted, "acceptance_rate": round(tot.rate, 4), "per_task": rset.table(),
                  "calls": summary})
print(f"accepted {tot.accepted} of {tot.items} ({tot.rate:.1%})")
