"""Imports every task module so each registers itself."""

from . import (
    captioning,  # noqa: F401
    classification,  # noqa: F401
    depth,  # noqa: F401
    detection,  # noqa: F401
    embedding,  # noqa: F401
    generation,  # noqa: F401
    labels,  # noqa: F401
    pixcell,  # noqa: F401
    plant,  # noqa: F401
    sam,  # noqa: F401
)
