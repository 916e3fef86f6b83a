"""An adapter whose setup() fails."""

from pitboss_worker import Adapter, tool


class Broken(Adapter):
    def setup(self):
        raise RuntimeError("setup exploded")

    @tool
    def never(self):
        return None
