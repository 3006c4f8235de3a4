"""Public names loaded from submodules on first use (PEP 562), for the package ``__init__``s.

Importing a package then loads no JAX until a name that needs it is read.
"""

import importlib
import sys
import types
from typing import Callable, Optional


def install(package: str, exports: dict, fallback: Optional[Callable] = None) -> None:
  """Makes the module ``package`` resolve ``exports`` lazily.

  Args:
    package: the package's ``__name__``; call this at the end of its ``__init__``.
    exports: ``{submodule: (name, ...)}``: each name is read from ``package.submodule``
      on first access and then cached in the package. A submodule named like its
      main function (``hvp.hvp``) stays that function once the submodule loads.
    fallback: ``fallback(name)`` for any other name; raises ``AttributeError`` when it
      has none (None: every other name is an ``AttributeError``).
  """
  module_of = {name: module for module, names in exports.items() for name in names}
  namespace = sys.modules[package].__dict__

  class _Package(types.ModuleType):
    def __setattr__(self, name, value):
      if isinstance(value, types.ModuleType) and module_of.get(name) == name:
        value = getattr(value, name)
      super().__setattr__(name, value)

  def __getattr__(name):
    module = module_of.get(name)
    if module is None:
      if fallback is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
      return fallback(name)
    value = getattr(importlib.import_module(f"{package}.{module}"), name)
    namespace[name] = value
    return value

  def __dir__():
    return sorted(set(namespace) | set(namespace.get("__all__", ())))

  namespace["__getattr__"] = __getattr__
  namespace["__dir__"] = __dir__
  sys.modules[package].__class__ = _Package
