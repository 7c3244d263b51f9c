"""Capability packages that are also the capability's function: ``convlens.cam(model, images)`` and
``convlens.cam.GradCAM`` both work.

A package ``convlens/cam/`` and a top-level function ``convlens.cam`` cannot otherwise coexist: importing the
package sets ``convlens.cam`` to the module, whatever was bound there. So the package itself becomes callable,
forwarding to its function. Each such package ends its ``__init__`` with ``callable_package(__name__, "cam")``.
"""

from __future__ import annotations

import sys
import types


def callable_package(module_name: str, function_name: str) -> None:
    """Make the module ``module_name`` callable as its attribute ``function_name``."""
    module = sys.modules[module_name]
    function = getattr(module, function_name)

    class CallablePackage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, function_name)(*args, **kwargs)

    CallablePackage.__call__.__doc__ = function.__doc__
    CallablePackage.__name__ = f"{function_name}_package"
    module.__class__ = CallablePackage
