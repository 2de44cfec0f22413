"""Teacher -> student conversion. The package is also the API function :func:`gendistill.convert.api.convert`:
``gendistill.convert(teacher, "every:4", out=...)`` (see :mod:`gendistill.callable_package`)."""

from gendistill.callable_package import make_callable
from gendistill.convert.api import convert as _convert
from gendistill.convert.convert import convert_teacher, parameter_count, save_student, student_config_from_teacher
from gendistill.convert.layer_spec import parse_attention_layers

__all__ = ["convert_teacher", "parameter_count", "parse_attention_layers", "save_student", "student_config_from_teacher"]

make_callable(__name__, _convert)  # gendistill.convert(...) is gendistill.convert.api.convert(...)
