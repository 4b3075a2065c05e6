"""Teachers: OpenAI-compatible API, local transformers model, replay of recorded outputs."""
from nesylib.teacher.base import DEFAULT_SYSTEM, Teacher, TeacherReply, TeacherRequest

__all__ = ["DEFAULT_SYSTEM", "Teacher", "TeacherReply", "TeacherRequest"]
