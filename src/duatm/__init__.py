"""duatm: the Dual Attention Matching Network (Si et al., CVPR 2018) for person re-identification."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("duatm")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
