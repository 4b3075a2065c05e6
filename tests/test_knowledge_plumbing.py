"""What the knowledge methods hand the student on the synthetic benchmark (default world, no model):
passages and KB entries hold the facts rather than repeated method text, training passages cover
the needed facts about as well as test passages, S_P answers every training question, and the
"derives the answer" measure reads the reasoning rather than the letter."""
from collections import Counter
from pathlib import Path

import pytest
import yaml

from nesylib.pipeline.experiment import KardKnowledge, passage_text
from nesylib.knowledge.kb import KnowledgeBase, build_kb
from nesylib.knowledge.writer import generate_knowledge
from nesylib.synth import SynthConfig, SynthTeacher, generate_benchmark, generate_world, rationale_records
from nesylib.synth import experiment as sx

PRESETS = Path(__file__).resolve().parents[1] / "presets"


@pytest.fixture(scope="module")
def setup():
    config = SynthConfig()
    world = generate_world(config)
    bench = generate_benchmark(config, world)
    teacher = SynthTeacher(world)
    knowledge, failures = generate_knowledge(bench["train"], teacher, max_attempts=1)
    assert not failures
    return world, bench, teacher, knowledge, rationale_records(bench["train"], teacher)


def _cpu_08():
    return yaml.safe_load((PRESETS / "cpu.yaml").read_text())["notebooks"]["08_synthetic_benchmark"]


def test_passages_hold_facts_not_repeated_method_text(setup):
    world, bench, _, knowledge, _ = setup
    passages = [passage_text(t) for t in knowledge.values()]
    assert all("Learning Summary" not in p and "Supplementary" not in p for p in passages)
    sentences = Counter(s.strip() for p in passages for s in p.split(". ") if s.strip())
    # a sentence shared by more than 5% of the passages is boilerplate, not a fact of the world
    assert max(sentences.values()) <= 0.05 * len(passages), sentences.most_common(3)
    words = sum(len(p.split()) for p in passages) / len(passages)
    assert words < 40, words  # about three fact sentences (the old passages were ~190 tokens)
    fact = world.facts[bench["train"][0]["meta"]["facts"][0]]
    assert fact in passage_text(knowledge[bench["train"][0]["uid"]])


def _coverage(passages: dict, records, world) -> float:
    return sx.mean_coverage({u: "\n".join(p) for u, p in passages.items()}, records, world)


def test_kard_training_passages_cover_the_facts_as_test_passages_do(setup):
    world, bench, _, knowledge, train_rows = setup
    p08 = _cpu_08()
    evals = sx.eval_records(bench, None)
    k = p08["kard_k"]
    matched = KardKnowledge(train_rows, knowledge, k=k, keep_own=p08["kard_keep_own"])
    test_cov = _coverage({r["uid"]: matched.test(r) for r in evals}, evals, world)
    train_cov = _coverage(matched.train, train_rows, world)
    assert abs(train_cov - test_cov) < 0.1, (train_cov, test_cov)
    # D19 as written (own passage always left out) starves the training prompts of their facts
    loo = KardKnowledge(train_rows, knowledge, k=k, keep_own=0.0)
    assert test_cov - _coverage(loo.train, train_rows, world) > 0.15


def test_kb_entries_are_short_and_found_by_their_facts(setup):
    world, bench, teacher, _, train_rows = setup
    train = bench["train"][:200]
    # wrong outputs of several kinds: another question's rationale, a bare guess, nothing useful
    outputs = [train_rows[(i + 7) % len(train_rows)]["rationale"] if i % 3 == 0 else
               ("Therefore, the answer is (A)." if i % 3 == 1 else "I am not sure.") for i in range(len(train))]
    errors = [{"uid": r["uid"], "record": r, "question": r["question"], "stu_response": o,
               "stu_right_score": 0} for r, o in zip(train, outputs)]
    kb = build_kb(errors, teacher)
    assert len(kb) == len(train)
    facts = Counter(ln for e in kb for ln in e["supplementary_knowledge"].splitlines() if ln.strip())
    assert max(facts.values()) <= 0.05 * len(kb), facts.most_common(2)  # knowledge, not a repeated method text
    analyses = {e["learning_summary"] for e in kb}
    assert len(analyses) > 3  # written from each wrong output, not one text for all
    assert sum(len(e["summary"].split()) for e in kb) / len(kb) < 70
    evals = [r for r in sx.eval_records(bench, None)]
    by_q = _kb_cov(KnowledgeBase(kb.entries).index("bm25", text="question"), evals, world)
    by_k = _kb_cov(KnowledgeBase(kb.entries).index("bm25", text=_cpu_08()["kb_index_text"]), evals, world)
    assert by_k > by_q, (by_k, by_q)


def _kb_cov(kb, evals, world) -> float:
    k = _cpu_08()
    texts = kb.knowledge_for_many(evals, k_retrieve=k["k_retrieve"], k_insert=k["k_insert"])
    return sx.mean_coverage({r["uid"]: t for r, t in zip(evals, texts)}, evals, world)


def test_sp_answers_every_training_question_in_the_presets():
    """NesyCD's KB is built from S_P's errors on the training questions: all of them (§3 step 2)."""
    cpu = yaml.safe_load((PRESETS / "cpu.yaml").read_text())["notebooks"]
    assert cpu["02_kb_construction"].get("demo_items_per_task") is None
    assert cpu["08_synthetic_benchmark"].get("demo_items_per_task") is None


@pytest.mark.parametrize("output, derives", [
    ("Tavo lives in Darvik. Darvik is option (B). Therefore, the answer is (A).", True),
    ("Tavo lives in Ulmar. Ulmar is option (A). Therefore, the answer is (A).", False),
    ("Darvik or Ulmar? I think Ulmar. Therefore, the answer is (B).", False),
    ("No idea.", False),
])
def test_derives_answer_reads_the_reasoning(output, derives):
    rec = {"uid": "u", "answer": "(B)", "options": ["(A) Ulmar", "(B) Darvik", "(C) Kresh", "(D) Vol"]}
    assert sx.derives_answer(output, rec, correct=False) is derives
    assert sx.derives_answer("anything", {"uid": "n", "answer": "12", "options": None}, correct=True)
