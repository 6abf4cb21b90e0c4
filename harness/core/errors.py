"""Exception types. Each names the bad value and what would be valid, so a failing case reads as a diagnosis."""

from __future__ import annotations


class HarnessError(Exception):
    """Base class for errors raised by the harness."""


class UnknownNameError(HarnessError, KeyError):
    """A model, site, category or option value that is not one of the valid choices."""

    def __init__(self, kind: str, name: object, valid: list[str] | tuple[str, ...]):
        self.kind, self.name, self.valid = kind, name, list(valid)
        super().__init__(f"unknown {kind} {name!r}; valid choices: {', '.join(map(str, valid)) or '(none)'}")

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return self.args[0]


class ModelUnavailableError(HarnessError):
    """The checkpoint is not on this machine and downloading was not allowed: cases skip with this message."""


class CorruptCheckpointError(HarnessError):
    """A checkpoint's weight file is there but cannot be read (truncated, overwritten): an error that fails the
    cases, never a skip — a regression run must not hide a broken checkpoint."""


class UnsupportedModelError(HarnessError):
    """A registered model whose family the harness cannot run experiments on yet."""


class SiteResolutionError(HarnessError):
    """A site matched no module, or the modules it matched disagree with the model config."""


class InvalidKError(HarnessError, ValueError):
    """k is negative or larger than the number of neurons in the site."""


class MaskError(HarnessError):
    """A mask could not be applied, did not reach a requested neuron, or left the model modified."""


class ImageFolderError(HarnessError):
    """An image folder is missing, empty, or holds corrupt or non-image files."""


class MetricError(HarnessError, ArithmeticError):
    """A metric came out NaN or infinite."""


class CacheError(HarnessError):
    """A cache entry could not be written."""


class TextFileError(HarnessError):
    """A text file is missing, empty, not UTF-8, or too short to score."""


class GgufError(HarnessError):
    """A GGUF file that is not the one expected, is truncated or corrupt, or that the GGUF loader needs packages
    for."""


class BaselineError(HarnessError):
    """An unreadable baseline file."""
