from nesylib.kb import parse_analysis
from nesylib.knowledge import parse_knowledge
from nesylib.teacher.base import TeacherRequest
from nesylib.teacher.derived import DerivedKnowledgeTeacher
from nesylib.teacher.cot import replay_rationales
from nesylib import data


def test_derived_knowledge_parses_and_hides_the_label(data_dir):
    train = data.load_bbh("train", ["date_understanding"])[:8]
    rs = replay_rationales(train)
    t = DerivedKnowledgeTeacher({r["uid"]: r["rationale"] for r in rs.records})
    reqs = [TeacherRequest("", kind=k, record=r) for r in rs.records for k in ("knowledge", "error_analysis")]
    replies = t.complete(reqs)
    assert all(rep.ok for rep in replies)
    for req, rep in zip(reqs, replies):
        assert "Therefore, the answer is" not in rep.text.split("Supplementary Knowledge:")[0]
        assert parse_knowledge(rep.text)[0] is not None
        summary, knowledge = parse_analysis(rep.text)
        assert summary.strip() and "one of the listed options" in knowledge


def test_derived_teacher_refuses_test_items_and_missing_rationales(data_dir):
    test = data.load_bbh("test", ["navigate"])[:1]
    train = data.load_bbh("train", ["navigate"])[:1]
    t = DerivedKnowledgeTeacher({})
    a, b, c = t.complete([TeacherRequest("", kind="knowledge", record=test[0]),
                          TeacherRequest("", kind="knowledge", record=train[0]),
                          TeacherRequest("", kind="cot", record=train[0])])
    assert not a.ok and "not a train record" in a.error
    assert not b.ok and "no accepted rationale" in b.error
    assert not c.ok
