"""Optional packages: import them where a feature needs them, or fail with one line that names
the extra to install.

Why: the core install stays small (torch, numpy, ...); export and other add-ons pull their own
packages through ``pip install 'duatm[extra]'``, and a user who lacks them should be told exactly
that, not shown an ImportError traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the extra that provides it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise MissingExtraError saying ``purpose`` needs ``duatm[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{purpose} needs the optional package {module.split('.')[0]!r}, which is not "
            f"installed: pip install 'duatm[{extra}]'"
        ) from err
