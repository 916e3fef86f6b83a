"""pitboss_worker: the Python side of pitboss.

Write an adapter with @tool (and optionally the Adapter base class); the
pitboss host runs it with ``python -m pitboss_worker --adapter SPEC --socket PATH``.
"""

from ._version import __version__
from .adapter import Adapter, ThreadSafeAdapter, tool

__all__ = ["Adapter", "ThreadSafeAdapter", "tool", "__version__"]
