"""duatm: the Dual Attention Matching Network (Si et al., CVPR 2018) for person re-identification.

``duatm.load(checkpoint)`` gives a trained model with ``.extract(images)`` and
``.distance(xq, xg)`` (see :mod:`duatm.api`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("duatm")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from duatm.api import TrainedModel, load

__all__ = ["TrainedModel", "__version__", "load"]
