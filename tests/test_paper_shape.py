"""The paper preset's shape on every commit (issue #18, item 3).

``presets/paper.yaml`` runs through the runner a user calls (``nesylib run --preset paper --set ...``:
``params.run_with_overrides``) with its structure as it is: SKIntern with T=6 and 6 demonstrations,
every baseline of 05, all six evaluation sets, and an LLM teacher (01), tutor (02) and knowledge writer
(04) behind an OpenAI-compatible endpoint, here the project's fake server, which tells the three roles
apart by their prompts and answers each in the format its notebook parses. The overrides in ``SIZE``
change sizes only (the tiny random student, 2 BBH tasks, a few items, 1-step training, 8 new tokens, the
synthetic notebooks on their tiny world) and point the three endpoints at the server; the key comes from
``$OPENAI_API_KEY``, as in the preset.

The run costs about what the smoke preset's run costs (3.5-4 min on the 2-core development machine
beside a reference run): nine notebook kernels, 7 SKIntern stages in 04 and in each SKIntern student of
06 and 08, every baseline. Nearly all of it is per-notebook and per-student overhead, not items.
"""
import json
from collections import Counter
from pathlib import Path

import pytest

from nesylib.knowledge import writer
from nesylib.pipeline import experiment, runner, runs
from nesylib.knowledge.kb import QUESTION_HEADER, RESPONSE_HEADER
from nesylib.pipeline.params import apply_overrides, parse_override, run_with_overrides
from nesylib.teacher.cot import STEP_CUE

KEY = "sk-test-paper-" + "w4" * 14
TASKS = ["navigate", "date_understanding"]
PER_TASK = 7   # 6 same-task demonstrations for each BBH item at SKIntern's stage 0
GSM8K = 3      # the teacher never gets one of them right: 2 accepted
BASE_URL = "{base_url}"  # filled in with the fake server's address
BASELINES = ["base", "ft", "std", "mt-cot", "mt-re", "kard", "cascod"]  # 05's methods: the preset keeps them all
EVAL_SETS = ["bbh", "gsm8k", "agieval", "arc-e", "arc-c", "gsm8k_plus"]

# The only overrides: sizes, and the three endpoints. Every other value is the paper preset's.
SIZE = [
    "common.student=tiny-llama",
    f"common.bbh_tasks=[{', '.join(TASKS)}]",
    f"common.train_per_task={PER_TASK}",
    f"common.gsm8k_train={GSM8K}",
    "common.eval_per_task={" + ", ".join(f"{d}: 1" for d in EVAL_SETS) + "}",
    "common.train.max_steps=1",           # SKIntern's budget is raised to one step per stage: 7
    "common.train.per_device_batch=2",
    "common.train.grad_accum=1",
    "common.train.lora_r=4",
    "common.train.lora_alpha=8",
    "common.max_new_tokens=8",
    f"01_teacher_distillation.teacher_base_url={BASE_URL}",
    f"02_kb_construction.tutor_base_url={BASE_URL}",
    f"04_skintern_curriculum.knowledge_base_url={BASE_URL}",
    "08_synthetic_benchmark.synth_config=smoke",     # the tiny synthetic world (06 reads 08's)
    "08_synthetic_benchmark.eval_per_task_synth={test: 1, ood: 1}",
]
SIZE_KNOBS = {"student", "bbh_tasks", "train_per_task", "gsm8k_train", "eval_per_task", "train.max_steps",
              "train.per_device_batch", "train.grad_accum", "train.lora_r", "train.lora_alpha", "max_new_tokens",
              "teacher_base_url", "tutor_base_url", "knowledge_base_url", "synth_config", "eval_per_task_synth"}
TEACHER_MARK, TUTOR_MARK, WRITER_MARK = "(fake teacher)", "(fake tutor)", "(fake writer)"
TUTOR_REPLY = (f"**Learning Summary:**\n1. Re-read what is asked {TUTOR_MARK}.\n2. Check every step.\n\n"
               f"**Supplementary Knowledge:**\n1. A definition the student missed {TUTOR_MARK}.")


def role(body: dict) -> str:
    """Which notebook's LLM sent this request, from its prompt."""
    text = body["messages"][-1]["content"]
    if QUESTION_HEADER in text and RESPONSE_HEADER in text:
        return "tutor"            # 02: the error-analysis prompt (nesylib.knowledge.kb)
    if text.startswith(writer.ROLE):
        return "writer"           # 04: the knowledge prompt (nesylib.knowledge.writer)
    if text.rstrip().endswith(STEP_CUE):
        return "teacher"          # 01: a CoT prompt (nesylib.teacher.cot)
    return "unknown"


class Replies:
    """The fake endpoint's answers, in each role's format. The teacher answers every question right,
    except ``late`` (wrong in the first round, at T=0.2) and ``never`` (always wrong)."""

    def __init__(self, train: list[dict]):
        self.gold = {r["question"]: r["answer"] for r in train}
        self.late = next(r for r in train if r["answer"] in ("Yes", "No"))
        self.never = [r for r in train if r["task"] == "gsm8k"][-1]

    def teacher(self, text: str, temperature: float) -> str:
        text = text.rstrip()
        question = next(q for q in self.gold if text.endswith(f"Q: {q}\n{STEP_CUE}"))
        answer = self.gold[question]
        if question == self.never["question"]:
            answer = "-1"
        elif question == self.late["question"] and temperature < 0.25:
            answer = "No" if answer == "Yes" else "Yes"
        return (f"Let us read the question {TEACHER_MARK} and reason one step at a time.\n"
                f"Each condition is checked in turn. Therefore, the answer is {answer}.")

    def __call__(self, body: dict) -> str:
        who, text = role(body), body["messages"][-1]["content"]
        if who == "teacher":
            return self.teacher(text, body["temperature"])
        if who == "tutor":
            return TUTOR_REPLY
        if who == "writer":
            return (f"Sure, here it is.\nLearning Summary:\n1. Plan the steps {WRITER_MARK}.\n2. Verify the result.\n\n"
                    f"Supplementary Knowledge:\n1. A fact the task relies on {WRITER_MARK}.\n2. A technique.")
        return "I do not know this prompt."


def _overridden(sets: list[str]) -> set[str]:
    """'student', 'train.max_steps', ...: what the overrides set."""
    out = set()
    for arg in sets:
        (_, name, *keys), _ = parse_override(arg)
        out.add(".".join([name, *keys]))
    return out


def test_the_overrides_change_sizes_only():
    """SIZE sets only size knobs and endpoints; the structural values stay the paper preset's."""
    assert _overridden(SIZE) <= SIZE_KNOBS
    paper = runs.load_preset("paper")
    preset, lines = apply_overrides(paper, [s.replace(BASE_URL, "http://127.0.0.1:9/v1") for s in SIZE])
    assert len(lines) == len(SIZE)
    assert sorted(preset["common"]["eval_per_task"]) == sorted(paper["common"]["eval_per_task"]) == sorted(EVAL_SETS)
    for k, v in paper["common"]["train"].items():
        if f"train.{k}" not in SIZE_KNOBS:
            assert preset["common"]["train"][k] == v, k
    assert preset["notebooks"]["04_skintern_curriculum"] == {
        **paper["notebooks"]["04_skintern_curriculum"], "knowledge_base_url": "http://127.0.0.1:9/v1"}


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory, tiny_model_dir, data_dir):
    from fake_openai_server import FakeOpenAIServer

    root = tmp_path_factory.mktemp("paper_shape")
    seed = runs.load_preset("paper")["common"]["seed"]
    train = experiment.select_train(TASKS, PER_TASK, GSM8K, seed)  # the questions 01 will send
    replies = Replies(train)
    log = []
    with pytest.MonkeyPatch.context() as mp, FakeOpenAIServer(api_key=KEY, reply_fn=replies) as server:
        mp.setenv("OPENAI_API_KEY", KEY)  # the preset's api_key_env
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        sets = [s.replace(BASE_URL, server.base_url) for s in SIZE]
        summary = run_with_overrides("paper", sets, run_root=root, log=log.append, heartbeat_s=None)
        paid = Counter()
        for key, n in server.paid.items():
            paid[role(server.bodies[key])] += n
        attempts = sum(server.attempts.values())
    res = {p.parent.name: json.loads(p.read_text()) for p in root.glob("*/results.json")}
    params = {p.parent.name: json.loads(p.read_text()) for p in root.glob("*/params.json")}
    return dict(root=root, train=train, replies=replies, summary=summary, log=log, paid=paid, attempts=attempts,
                res=res, params=params)


def test_every_notebook_ran_without_a_failure(paper_run):
    root, summary = paper_run["root"], paper_run["summary"]
    assert [s["notebook"] for s in summary] == [p.stem for p in runner.list_notebooks()]
    assert all(s["status"] == "ran" for s in summary), summary
    assert not list(root.glob("*.failed")), "a notebook failed"
    assert set(paper_run["res"]) == {p.stem for p in runner.list_notebooks()}
    for nb in root.glob("*.ipynb"):
        assert "NotEnoughKnowledge" not in nb.read_text(), nb.name
    for p in root.rglob("*"):
        if p.is_file():
            assert KEY not in p.read_text(errors="replace"), f"the API key leaked into {p}"


def test_the_paper_structure_is_intact_in_params_json(paper_run):
    """Every value the paper preset gives a notebook reached it, except the size overrides."""
    paper, params = runs.load_preset("paper"), paper_run["params"]
    sized = _overridden(SIZE)
    for stem, got in params.items():
        for k, v in runs.notebook_params(paper, stem).items():
            if k not in got or k in sized or k == "preset":
                continue
            if k == "train":
                v = {tk: tv for tk, tv in v.items() if f"train.{tk}" not in sized}
                assert {tk: got[k][tk] for tk in v} == v, stem
            else:
                assert got[k] == v, (stem, k, got[k], v)
        assert got["preset"] == "paper"
    sk = params["04_skintern_curriculum"]
    assert (sk["stages_T"], sk["max_demos"], sk["schedule_kind"], sk["demo_mode"]) == (6, 6, "linear", "random")
    assert params["05_baselines"]["methods"] == BASELINES
    for stem, backend, model in (("01_teacher_distillation", "teacher_backend", "teacher_model"),
                                 ("02_kb_construction", "tutor_backend", "tutor_model"),
                                 ("04_skintern_curriculum", "knowledge_backend", "knowledge_model")):
        p = params[stem]
        assert (p[backend], p[model], p["api_key_env"]) == ("openai", "gpt-3.5-turbo", "OPENAI_API_KEY"), stem
        assert (p["budget_usd"], p["price_in_out"], p["concurrency"]) == (50, [0.5, 1.5], 16), stem
    assert params["00_data"]["datasets"] == EVAL_SETS
    for stem in ("02_kb_construction", "03_nesycd_training", "04_skintern_curriculum", "05_baselines"):
        assert sorted(params[stem]["eval_per_task"]) == sorted(EVAL_SETS)
        assert params[stem]["train"]["cutoff_len"] == 2048 and params[stem]["train"]["epochs"] == 10
        assert params[stem]["eval_batch_size"] == 64
    syn = params["08_synthetic_benchmark"]
    assert (syn["stages_T"], syn["max_demos"]) == (6, 6)  # the notebook's defaults: the preset sets neither


def test_the_three_roles_were_served_and_paid(paper_run):
    paid, res = paper_run["paid"], paper_run["res"]
    assert paid["unknown"] == 0 and paid["teacher"] and paid["tutor"] and paid["writer"]
    # 15 questions right in round 1 (2 samples each); one right in round 2 (2 + 3); one never (2 + 3 + 4 + 5)
    assert paid["teacher"] == res["01_teacher_distillation"]["calls"]["succeeded"] == 15 * 2 + 5 + 14
    assert paid["tutor"] == res["02_kb_construction"]["tutor_calls"]["succeeded"] == res["02_kb_construction"]["errors"]
    assert paid["writer"] == res["04_skintern_curriculum"]["knowledge"]["calls"]["succeeded"] == 16
    assert paper_run["attempts"] == sum(paid.values())  # no call was repeated


def test_01_kept_the_fake_teachers_right_rationales(paper_run):
    res, replies = paper_run["res"]["01_teacher_distillation"], paper_run["replies"]
    assert res["teacher"] == "openai:gpt-3.5-turbo"
    assert (res["items"], res["accepted"]) == (len(paper_run["train"]), len(paper_run["train"]) - 1)
    rows = [json.loads(x) for x in (paper_run["root"] / "01_teacher_distillation" / "rationales.jsonl")
            .read_text().splitlines()]
    by_uid = {r["uid"]: r for r in rows}
    assert replies.never["uid"] not in by_uid
    assert by_uid[replies.late["uid"]]["provenance"]["round"] == 1
    for r in rows:
        assert TEACHER_MARK in r["rationale"] and r["rationale"].endswith(f"the answer is {r['answer']}.")


def test_02_kb_holds_the_fake_tutors_analyses(paper_run):
    res = paper_run["res"]["02_kb_construction"]
    assert res["tutor"] == "openai:gpt-3.5-turbo" and res["failures"] == 0
    assert res["demo_items"] == 16 and res["errors"] > 0 and res["kb_entries"] == res["errors"]
    assert res["knowledge_check"]["share"] == 1.0
    from nesylib.knowledge.kb import KnowledgeBase

    entries = KnowledgeBase.load(res["kb_path"]).entries  # the sections are parsed from 'summary' on load
    assert len(entries) == res["kb_entries"]
    for e in entries:
        assert e["teacher"] == "openai:gpt-3.5-turbo"
        assert e["summary"] == TUTOR_REPLY  # verbatim: what the student sees (nesylib.knowledge.kb)
        assert TUTOR_MARK in e["learning_summary"] and TUTOR_MARK in e["supplementary_knowledge"]


def test_03_trained_a_nesycd_student_on_the_kb(paper_run):
    res = paper_run["res"]["03_nesycd_training"]
    assert res["tutor"] == "openai:gpt-3.5-turbo"
    assert res["kb_entries"] == res["se_kb_examples"] == paper_run["res"]["02_kb_construction"]["kb_entries"]
    assert (Path(res["se_adapter"]) / "adapter_model.safetensors").is_file()
    (row,) = res["rows"]
    assert row["method"] == "NesyCD" and row["knowledge_rate"] > 0
    assert {d: row[f"{d}_n"] for d in EVAL_SETS} == {"bbh": 2, "gsm8k": 1, "agieval": 8, "arc-e": 1, "arc-c": 1,
                                                       "gsm8k_plus": 1}


def test_04_ran_seven_stages_from_six_demonstrations_to_none(paper_run):
    res = paper_run["res"]["04_skintern_curriculum"]
    stages = res["stages"]
    assert [s["stage"] for s in stages] == list(range(7))
    assert [s["n_demos"] for s in stages] == [6, 5, 4, 3, 2, 1, 0]
    shown = [s["demos_mean"] for s in stages]
    assert shown == sorted(shown, reverse=True) and shown[-1] == 0
    # the BBH items get all 6 demonstrations at stage 0 (the 2 GSM8K items have only one other)
    assert shown[0] == (14 * 6 + 2 * 1) / 16 and stages[0]["demos_dropped"] == 0
    assert [s["keep_ratio"] for s in stages] == [round(1 - t / 6, 4) for t in range(7)]
    assert res["budget"]["per_stage"] == [1] * 7 and res["train_metrics"]["steps"] == 7
    assert len(res["train_metrics"]["stage_ends"]) == 7
    assert res["knowledge"]["writer"] == "openai:gpt-3.5-turbo" and res["knowledge"]["share"] == 1.0
    texts = [json.loads(x)["knowledge"] for x in (paper_run["root"] / "04_skintern_curriculum" / "knowledge.jsonl")
             .read_text().splitlines()]
    assert len(texts) == 16 and all(t.startswith("Learning Summary:") and WRITER_MARK in t for t in texts)
    (row,) = res["rows"]
    assert row["stages_T"] == 6 and row["max_demos"] == 6


def test_05_has_a_row_for_every_baseline(paper_run):
    rows = paper_run["res"]["05_baselines"]["rows"]
    assert [r["method_id"] for r in rows] == BASELINES
    for r in rows:
        assert all(r[f"{d}_n"] >= 1 for d in EVAL_SETS), r["method"]
        assert (r.get("train_seconds") is None) == (r["method_id"] == "base")


def test_the_synthetic_notebooks_and_the_figures_completed(paper_run):
    res = paper_run["res"]
    syn = {r["method_id"] for r in res["08_synthetic_benchmark"]["rows"]}
    assert {"std", "oracle", "kard", "nesycd", "skintern", "ft"} <= syn
    sweeps = res["06_ablations"]["sweeps"]
    assert all(sweeps[s] for s in ("k", "train_size", "schedule", "content"))
    figs = res["07_flops_and_figures"]
    assert figs["missing"] == [] and figs["source_presets"] == ["paper"]
    assert set(figs["inputs"]) == {p.stem for p in runner.list_notebooks()} - {"07_flops_and_figures"}
