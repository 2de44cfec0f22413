"""``gendistill.convert(...)``, ``gendistill.distill(...)`` and ``gendistill.bench(...)``: three sub-packages that are
also the API functions of the same names.

Why this exists: the Python API promises ``gendistill.distill("tiny-cpu")`` *and* ``import gendistill.distill.trainer``
(``from gendistill.convert import convert_teacher``, ``monkeypatch.setattr("gendistill.distill.pipeline.x", ...)``).
Whenever a sub-package is imported, Python binds it as the attribute of the same name of its parent package, so a
plain function ``gendistill.distill`` would be replaced by the sub-package; and a function cannot hold the
sub-package's modules as attributes. So the sub-package itself is made callable: its module object gets a subclass of
:class:`types.ModuleType` whose ``__call__`` is the function (assigning a module's ``__class__`` to such a subclass is
the documented way to customise a module, see the language reference, "Customizing module attribute access").

Each package does this in its own ``__init__`` with the function of its own ``api`` module
(``gendistill/convert/api.py`` ...), so no package imports a higher tier to become callable.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable
from typing import Any


def make_callable(module_name: str, fn: Callable[..., Any]) -> None:
    """Make the (already imported) package ``module_name`` callable as ``fn``; ``inspect.signature`` and ``help`` of
    the package show the function's signature and docstring, and ``package.__call__`` is ``fn``."""
    module = sys.modules[module_name]

    class _CallablePackage(types.ModuleType):
        __call__ = staticmethod(fn)

        @property
        def __signature__(self) -> inspect.Signature:  # inspect.signature(gendistill.convert)
            return inspect.signature(fn)

    _CallablePackage.__name__ = f"callable_package[{fn.__name__}]"
    _CallablePackage.__doc__ = fn.__doc__
    module.__class__ = _CallablePackage


__all__ = ["make_callable"]
