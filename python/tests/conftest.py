import shutil

import pytest

from worker_harness import Host, short_tmpdir


@pytest.fixture
def short_dir():
    d = short_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def host(short_dir):
    h = Host(short_dir)
    yield h
    h.close()
