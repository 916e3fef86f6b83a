"""A module adapter that declares itself thread-safe (spec 'safe_module')."""

from pitboss_worker import tool

thread_safe = True


@tool
def double(x):
    return 2 * x
