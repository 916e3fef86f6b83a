"""pitboss_worker: the Python side of pitboss.

Write an adapter with @tool (and optionally the Adapter base class); the
pitboss host runs it with ``python -m pitboss_worker --adapter SPEC --socket PATH``.
Inside a tool, ``context`` tells the call's request id, its session (and the
session's soft state) and whether the host cancelled it.
"""

from ._version import __version__
from .adapter import Adapter, ThreadSafeAdapter, tool
from .call_context import context

__all__ = ["Adapter", "ThreadSafeAdapter", "context", "tool", "__version__"]
