"""Teacher -> student conversion."""

from gendistill.convert.convert import convert_teacher, parameter_count, save_student, student_config_from_teacher
from gendistill.convert.layer_spec import parse_attention_layers

__all__ = ["convert_teacher", "parameter_count", "parse_attention_layers", "save_student", "student_config_from_teacher"]

from gendistill.api import callable_module as _callable_module
from gendistill.api import convert as _convert

_callable_module(__name__, _convert)  # gendistill.convert(...) is gendistill.api.convert(...)
