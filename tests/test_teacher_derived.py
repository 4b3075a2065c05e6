from nesylib.knowledge.text import is_usable, parse
from nesylib.teacher.base import TeacherRequest
from nesylib.teacher.derived import DerivedKnowledgeTeacher, mentions_answer
from nesylib.teacher.cot import replay_rationales
from nesylib.data import benchmarks

import pytest


def test_derived_knowledge_parses_and_hides_the_label(data_dir):
    train = benchmarks.load_bbh("train", ["date_understanding"])[:8]
    rs = replay_rationales(train)
    t = DerivedKnowledgeTeacher({r["uid"]: r["rationale"] for r in rs.records})
    reqs = [TeacherRequest("", kind=k, record=r) for r in rs.records for k in ("knowledge", "error_analysis")]
    replies = t.complete(reqs)
    assert all(rep.ok for rep in replies)
    for req, rep in zip(reqs, replies):
        assert "Therefore, the answer is" not in rep.text.split("Supplementary Knowledge:")[0]
        assert is_usable(rep.text)
        summary, knowledge = parse(rep.text)
        assert summary.strip() and "one of the listed options" in knowledge


def test_derived_teacher_refuses_test_items_and_missing_rationales(data_dir):
    test = benchmarks.load_bbh("test", ["navigate"])[:1]
    train = benchmarks.load_bbh("train", ["navigate"])[:1]
    t = DerivedKnowledgeTeacher({})
    a, b, c = t.complete([TeacherRequest("", kind="knowledge", record=test[0]),
                          TeacherRequest("", kind="knowledge", record=train[0]),
                          TeacherRequest("", kind="cot", record=train[0])])
    assert not a.ok and "not a train record" in a.error
    assert not b.ok and "no accepted rationale" in b.error
    assert not c.ok


# ------------------------------------------------------------------ the answer never appears
DATE = {"uid": "bbh/date_understanding/9", "dataset": "bbh", "task": "date_understanding", "split": "train",
        "question": ("The first day of 2019 is a Tuesday, and today is the first Monday of 2019. What is the date "
                     "one year ago from today in MM/DD/YYYY?\nOptions:\n(A) 01/08/2018\n(B) 01/07/2018\n"
                     "(C) 01/02/2018\n(D) 01/12/2018\n(E) 05/07/2017\n(F) 10/29/2017"),
        "options": ["(A) 01/08/2018", "(B) 01/07/2018", "(C) 01/02/2018", "(D) 01/12/2018", "(E) 05/07/2017",
                    "(F) 10/29/2017"],
        "answer": "(B)", "task_description": "Infer the date from context.",
        "rationale": ("If the first day of 2019 is a Tuesday, and today is the first Monday of 2019, then today's "
                      "date is January 7, 2019. The date one year ago from today is January 7, 2018, that is "
                      "01/07/2018. Therefore, the answer is (B).")}


def test_mentions_answer_option_letter_and_text():
    assert mentions_answer("so I pick (B) here", DATE) and mentions_answer("pick (b).", DATE)
    assert mentions_answer("One year back gives 01/07/2018.", DATE)
    assert not mentions_answer("(A) 01/08/2018 is one day off", DATE)
    assert not mentions_answer("B is a letter; 01/07/20189 is no date", DATE)
    no_options = {k: v for k, v in DATE.items() if k != "options"}  # the text is read from the question
    assert mentions_answer("that is 01/07/2018", no_options) and not mentions_answer("01/07/2019", no_options)
    rec = {"answer": "(A)", "options": ["(A) The blue jay is the second from the left", "(B) The quail is the"
                                        " second from the left"], "question": ""}
    assert mentions_answer("so the blue jay  is the second\nfrom the left.", rec)
    assert not mentions_answer("The quail is the second from the left.", rec)


def test_mentions_answer_numbers_and_words():
    num = {"answer": "24", "question": "", "options": []}
    assert mentions_answer("She has 24 apples.", num) and mentions_answer("costs $24.", num)
    assert not mentions_answer("She has 124 apples and 240 pears, 24.5 kg", num)
    assert mentions_answer("that is 2,400 in all", {"answer": "2400", "question": "", "options": []})
    no = {"answer": "No", "question": "", "options": ["Yes", "No"]}
    assert mentions_answer("No, she lies.", no) and mentions_answer("the answer: no", no)
    assert not mentions_answer("Not at all. Now we know.", no)
    valid = {"answer": "valid", "question": "", "options": ["valid", "invalid"]}
    assert mentions_answer("The argument is valid.", valid) and not mentions_answer("It is invalid.", valid)
    assert not mentions_answer("", no)


TASKS = ["date_understanding", "logical_deduction_three_objects", "navigate", "web_of_lies", "boolean_expressions"]
_FLIP = {"yes": "Yes", "no": "Yes", "true": "False", "false": "True", "valid": "invalid", "invalid": "valid"}


def _wrong_answer(rec: dict) -> str:
    gold = rec["answer"]
    if gold.startswith("("):
        return next(o.split(")")[0] + ")" for o in rec["options"] if not o.startswith(gold))
    if gold.lstrip("-").isdigit():
        return str(int(gold) + 100)
    return _FLIP[gold.lower()] if gold.lower() != "yes" else "No"


@pytest.fixture(scope="module")
def sample(data_dir):
    bbh = benchmarks.load_bbh("train", TASKS)
    recs = [r for t in TASKS for r in [x for x in bbh if x["task"] == t][:6]] + benchmarks.load_gsm8k("train")[:6]
    return replay_rationales(recs).records + [DATE]


def test_derived_texts_never_state_the_gold_answer(sample):
    t = DerivedKnowledgeTeacher({r["uid"]: r["rationale"] for r in sample})
    assert {r["task"] for r in sample} == set(TASKS) | {"gsm8k"}
    for rec in sample:
        wrong = _wrong_answer(rec)
        outputs = [f"First I read the question. I think it is {wrong}. Therefore, the answer is {wrong}.",
                   "Let me think. " + "the the the " * 40,  # no marker, degenerate
                   rec["rationale"].rsplit("Therefore", 1)[0] + f"Therefore, the answer is {wrong}."]
        reqs = [TeacherRequest("", kind="knowledge", record=rec)] + [
            TeacherRequest("", kind="error_analysis", record=rec, extra={"student_output": o}) for o in outputs]
        replies = t.complete(reqs)
        for rep in replies:
            assert rep.ok, rep.error
            assert not mentions_answer(rep.text, rec), (rec["uid"], rec["answer"], rep.text)
            assert rep.text.startswith("Learning Summary:\n1. ") and "\n\nSupplementary Knowledge:\n1. " in rep.text
            assert is_usable(rep.text)
        analyses = [rep.text for rep in replies[1:]]
        assert len(set(analyses)) == 3, rec["uid"]  # written from the student's output
        assert wrong in analyses[0].split("Supplementary Knowledge:")[0]


def test_date_example_analysis_is_about_the_wrong_output():
    t = DerivedKnowledgeTeacher({DATE["uid"]: DATE["rationale"]})
    out = "Today is January 7, 2019. One year ago is 01/08/2018. Therefore, the answer is (A)."
    ana, know = t.complete([TeacherRequest("", kind="error_analysis", record=DATE, extra={"student_output": out}),
                            TeacherRequest("", kind="knowledge", record=DATE)])
    for text in (ana.text, know.text):
        assert "01/07/2018" not in text and "(B)" not in text and "January 7, 2018" not in text
    summary, knowledge = parse(ana.text)
    assert "(A)" in summary and "01/08/2018" in summary  # the chosen option and the unsupported step
    assert "Infer the date from context" in summary  # the general lesson comes from the task
    assert "January 7, 2019" in knowledge  # a reasoning step of the recorded rationale survives
    assert sum(len(x.split()) for x in ana.text.splitlines()) < 200


def test_a_reworded_gold_option_is_dropped_too():
    rec = {"uid": "bbh/logical_deduction_three_objects/0", "task": "logical_deduction_three_objects",
           "split": "train", "answer": "(A)", "task_description": "Deduce the order of a sequence of objects.",
           "question": "On a branch, there are three birds: a blue jay, a quail, and a falcon. ...",
           "options": ["(A) The blue jay is the second from the left", "(B) The quail is the second from the left",
                       "(C) The falcon is the second from the left"],
           "rationale": ("(1) The blue jay is to the right of the quail.\n(2) According to this ordering, the second "
                         "from the left is the blue jay.\nThe blue jay is the second from the left. Therefore, the "
                         "answer is (A).")}
    (rep,) = DerivedKnowledgeTeacher({rec["uid"]: rec["rationale"]}).complete(
        [TeacherRequest("", kind="knowledge", record=rec)])
    assert "The blue jay is to the right of the quail." in rep.text
    assert "second from the left is the blue jay" not in rep.text and not mentions_answer(rep.text, rec)


def test_list_numbers_are_not_the_answer():
    one = {"answer": "2", "question": "", "options": []}
    assert not mentions_answer("Learning Summary:\n1. Count the apples.\n2. Add the pears.", one)
    assert mentions_answer("1. There are 2 apples.", one)
