"""Records how many threads the worker had when it imported this module."""

import threading

from pitboss_worker import Adapter, tool

THREADS_AT_IMPORT = threading.active_count()


class Probe(Adapter):
    def setup(self):
        self.threads_at_setup = threading.active_count()

    @tool
    def threads_before_serving(self):
        return [THREADS_AT_IMPORT, self.threads_at_setup]
