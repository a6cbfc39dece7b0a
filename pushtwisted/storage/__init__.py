"""Storage backends: the ``Storage`` protocol and its implementations."""

from pushtwisted.storage.interface import (
    PendingUpdate,
    Storage,
    UpdateOutcome,
    UpdateResult,
)

__all__ = ["PendingUpdate", "Storage", "UpdateOutcome", "UpdateResult"]
