"""Critical-neuron collapse experiments on vision-language models, as pytest cases.

The library core (registry, sites, ranking, masking, metrics, experiment) has no pytest dependency; the pytest
integration lives in :mod:`harness.plugin`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from harness._torchvision_compat import install_import_hook

install_import_hook()

try:
    __version__ = version("can-harness")
except PackageNotFoundError:  # running from a checkout that was not pip-installed
    __version__ = "0.1.0+checkout"

__all__ = ["__version__"]
