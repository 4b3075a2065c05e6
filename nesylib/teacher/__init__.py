"""Teachers: OpenAI-compatible API, local transformers model, replay of recorded outputs."""
from nesylib.teacher.base import DEFAULT_SYSTEM, Teacher, TeacherReply, TeacherRequest
from nesylib.teacher.cached import (BudgetExceeded, CachedTeacher, CallProgress, CostPlan, PriceTable, RunSummary,
                                    TeacherError, TeacherUnreachable, plan_cost)
from nesylib.teacher.cot import (RationaleSet, SampleSchedule, cot_prompt, generate_rationales, load_rationales,
                                 replay_rationales)
from nesylib.teacher.factory import teacher_from_params
from nesylib.teacher.store import CallStore, call_key

__all__ = ["DEFAULT_SYSTEM", "Teacher", "TeacherReply", "TeacherRequest",
           "BudgetExceeded", "CachedTeacher", "CallProgress", "CostPlan", "PriceTable", "RunSummary", "TeacherError",
           "TeacherUnreachable",
           "RationaleSet", "SampleSchedule", "cot_prompt", "generate_rationales", "load_rationales",
           "replay_rationales", "teacher_from_params", "plan_cost", "CallStore", "call_key"]
