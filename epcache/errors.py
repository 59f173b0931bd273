"""Every error epcache raises on purpose, under one base class.

The CLI turns an `EpcacheError` into one line on stderr and exit code 2; anything else is a
bug and keeps its traceback. Subclasses also inherit the matching builtin so that callers'
`except FileNotFoundError` / `except ValueError` keep working.
"""

from __future__ import annotations

__all__ = [
    "BadImageError",
    "ConfigError",
    "CorruptStoreError",
    "DiskFullError",
    "EpcacheError",
    "FileSystemError",
    "HeadSpecError",
    "IncompleteStoreError",
    "LayoutVersionError",
    "MissingMasksError",
    "MissingPooledError",
    "ModelError",
    "NonFiniteFeaturesError",
    "ProvenanceMismatchError",
    "ReadOnlyStoreError",
    "ShapeMismatchError",
    "StoreExistsError",
    "StoreNotFoundError",
    "UnknownLayerError",
    "UnknownSplitError",
    "WeightsError",
]


class EpcacheError(Exception):
    """Base for errors a user can cause; the message names the problem and the fix."""


class StoreNotFoundError(EpcacheError, FileNotFoundError):
    """The path does not exist or is not an epcache store."""


class StoreExistsError(EpcacheError, FileExistsError):
    """A store already exists where a new one was to be created."""


class FileSystemError(EpcacheError, OSError):
    """The file system refused a write or read a user can fix: permissions, a read-only mount,
    a path through a regular file (``epcache/_fs/oserror.py`` words the message)."""

    def __str__(self) -> str:  # the message alone, not OSError's "[Errno 28] ..."
        return str(self.strerror) if self.strerror else super().__str__()


class DiskFullError(FileSystemError):
    """No space left on the device (or quota exhausted) for the store or run directory."""


class ReadOnlyStoreError(EpcacheError, PermissionError):
    """A write was attempted on a store opened read-only."""


class LayoutVersionError(EpcacheError):
    """The store's format version is not one this epcache reads."""


class CorruptStoreError(EpcacheError):
    """Metadata or chunk bytes are inconsistent with the store's own records."""


class IncompleteStoreError(EpcacheError):
    """Some chunks were never written (crashed or still-running extraction)."""


class UnknownSplitError(EpcacheError, KeyError):
    """The requested split is not in the store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownLayerError(EpcacheError, KeyError):
    """The requested layer is not in the store (or not in the model)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ShapeMismatchError(EpcacheError, ValueError):
    """Data appended to a store does not match its recorded shape or dtype."""


class ProvenanceMismatchError(EpcacheError):
    """Two stores (or a store and a command) disagree on what produced the bytes."""


class ModelError(EpcacheError, ValueError):
    """Unknown model name or a model epcache cannot extract from."""


class WeightsError(EpcacheError):
    """Weights could not be found or loaded."""


class BadImageError(EpcacheError):
    """An image file could not be decoded."""


class NonFiniteFeaturesError(EpcacheError):
    """The backbone produced inf/nan features (typically float16 overflow)."""


class ConfigError(EpcacheError, ValueError):
    """Invalid command-line option, sweep grid or dataset description."""


class HeadSpecError(ConfigError):
    """Invalid probe head specification."""


class MissingMasksError(EpcacheError, KeyError):
    """Per-pixel masks are asked of a store (or split) extracted without them."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MissingPooledError(EpcacheError, KeyError):
    """A config asks for the model's pooled output but the store was extracted without it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
