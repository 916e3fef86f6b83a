"""The adapter API: @tool, collecting tools, loading an adapter spec."""

import os
import sys
import threading
import types

import pytest

import pitboss_worker
from pitboss_worker import Adapter, ThreadSafeAdapter, tool
from pitboss_worker.adapter import (
    AdapterError,
    ThreadUnsafeAdapter,
    collect_tools,
    extend_sys_path,
    load_adapter,
    parse_spec,
    tools_of_instance,
    tools_of_module,
)
from worker_harness import ADAPTERS_DIR, EXAMPLES_DIR, all_at_once


@pytest.fixture
def clean_imports(monkeypatch):
    """Adapter modules imported by a test are forgotten after it; sys.path is restored."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_public_api():
    assert pitboss_worker.__version__ == "0.1.0"
    assert set(pitboss_worker.__all__) == {"Adapter", "ThreadSafeAdapter", "context", "tool", "__version__"}
    from pitboss_worker.call_context import CallContext

    assert isinstance(pitboss_worker.context, CallContext)


def test_installed_metadata_matches_version():
    from importlib import metadata

    try:
        installed = metadata.version("pitboss-worker")
    except metadata.PackageNotFoundError:
        installed = None  # running from the source tree (PYTHONPATH=python)
    assert installed in (None, pitboss_worker.__version__)


def test_tool_forms():
    @tool
    def plain():
        return 1

    @tool(name="other-name")
    def named():
        return 2

    @tool("positional-name")
    def positional():
        return 3

    @tool()
    def empty_parens():
        return 4

    assert plain() == 1, "the decorator returns the function unchanged"
    module = types.ModuleType("m")
    module.plain, module.named, module.positional, module.empty_parens = plain, named, positional, empty_parens
    module.alias = plain  # the same function twice is one tool
    module.helper = lambda: None  # not marked
    assert sorted(tools_of_module(module)) == ["empty_parens", "other-name", "plain", "positional-name"]


@pytest.mark.parametrize("bad", ["", 5])
def test_tool_rejects_bad_names(bad):
    with pytest.raises((ValueError, TypeError)):
        tool(name=bad)


def test_tool_needs_a_name_for_lambdas():
    with pytest.raises(ValueError):
        tool(lambda: None)


class Base(Adapter):
    @tool
    def kept(self):
        return "base"

    @tool
    def overridden_plain(self):
        return "base"

    @tool
    def overridden_tool(self):
        return "base"

    def helper(self):
        return "helper"


class Child(Base):
    def overridden_plain(self):  # no @tool: no longer a tool
        return "child"

    @tool
    def overridden_tool(self):
        return "child"

    @tool(name="static")
    @staticmethod
    def static_method(x):
        return x

    @classmethod
    @tool
    def klass(cls):
        return cls.__name__

    @property
    def some_property(self):
        raise AssertionError("collecting tools must not evaluate properties")


def test_tools_of_instance():
    tools = collect_tools(Child())
    assert sorted(tools) == ["kept", "klass", "overridden_tool", "static"]
    assert tools["overridden_tool"].func() == "child"
    assert tools["kept"].func() == "base"
    assert tools["static"].func(5) == 5
    assert tools["klass"].func() == "Child"
    # bound methods: the signature leaves `self` out
    assert list(tools["kept"].signature.parameters) == []


def test_duplicate_tool_names_are_an_error():
    class Dup:
        @tool(name="x")
        def a(self):
            pass

        @tool(name="x")
        def b(self):
            pass

    with pytest.raises(AdapterError):
        tools_of_instance(Dup())


@pytest.mark.parametrize(
    "spec,expected",
    [("mod", ("mod", None)), ("mod:Cls", ("mod", "Cls")), ("pkg.mod:Outer.Inner", ("pkg.mod", "Outer.Inner"))],
)
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", ":Cls", "mod:", "a:b:c"])
def test_parse_spec_rejects(spec):
    with pytest.raises(AdapterError):
        parse_spec(spec)


def test_load_class_spec_calls_setup_once(clean_imports):
    loaded = load_adapter("sample_tools:Sample", [ADAPTERS_DIR])
    assert loaded.instance.setup_calls == 1
    assert loaded.tools["setup_count"].func() == 1
    assert "other-name" in loaded.tools and "renamed" not in loaded.tools
    assert "module_add" not in loaded.tools, "a class spec serves the class's tools only"
    assert sys.path[0] == ADAPTERS_DIR
    assert sys.path[1] == os.getcwd()


def test_load_module_spec(clean_imports):
    loaded = load_adapter("sample_tools", [ADAPTERS_DIR])
    assert loaded.instance is None
    assert sorted(loaded.tools) == ["module-echo", "module_add"]


def test_load_example_adapter(clean_imports):
    loaded = load_adapter("adapter:Example", [EXAMPLES_DIR])
    assert sorted(loaded.tools) == ["add", "echo", "fail", "fib", "log", "lookup", "matmul", "noop", "pid", "sleep", "ticks"]
    assert loaded.tools["fib"].func(20) == 6765
    assert sorted(load_adapter("adapter", [EXAMPLES_DIR]).tools) == ["shout"]


def test_load_failures(clean_imports):
    with pytest.raises(ModuleNotFoundError):
        load_adapter("no_such_module_pbw", [ADAPTERS_DIR])
    with pytest.raises(RuntimeError, match="import exploded"):
        load_adapter("broken_import", [ADAPTERS_DIR])
    with pytest.raises(RuntimeError, match="setup exploded"):
        load_adapter("broken_setup:Broken", [ADAPTERS_DIR])
    with pytest.raises(AdapterError, match="no @tool"):
        load_adapter("no_tools:Empty", [ADAPTERS_DIR])
    with pytest.raises(AdapterError, match="no @tool"):
        load_adapter("no_tools", [ADAPTERS_DIR])
    with pytest.raises(AdapterError, match="no attribute"):
        load_adapter("no_tools:Missing", [ADAPTERS_DIR])


def test_extend_sys_path_order_and_no_duplicates(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "path", ["", "/x", str(tmp_path)])
    extend_sys_path([str(tmp_path), "/y"])
    assert sys.path[:3] == [str(tmp_path), "/y", os.getcwd()]
    assert sys.path.count(str(tmp_path)) == 1
    assert "" not in sys.path
    assert "/x" in sys.path


# --- thread safety ------------------------------------------------------------


def test_tool_thread_safe_marker():
    class Marked:
        @tool(thread_safe=True)
        def safe(self):
            pass

        @tool(name="unsafe", thread_safe=False)
        def unsafe_method(self):
            pass

        @tool
        def unmarked(self):
            pass

        @staticmethod
        @tool(thread_safe=True)
        def static_safe():
            pass

    tools = tools_of_instance(Marked())
    assert {name: t.thread_safe for name, t in tools.items()} == {
        "safe": True, "unsafe": False, "unmarked": None, "static_safe": True,
    }
    with pytest.raises(TypeError, match="True or False"):
        tool(thread_safe="yes")


def test_load_reads_thread_safe_declarations(clean_imports):
    assert load_adapter("sample_tools:Sample", [ADAPTERS_DIR]).thread_safe is None
    assert load_adapter("thread_tools:Unsafe", [ADAPTERS_DIR]).thread_safe is False
    assert load_adapter("thread_tools:Counter", [ADAPTERS_DIR]).thread_safe is True
    assert load_adapter("safe_module", [ADAPTERS_DIR]).thread_safe is True, "a module-level variable"
    assert load_adapter("sample_tools", [ADAPTERS_DIR]).thread_safe is None
    with pytest.raises(AdapterError, match="thread_safe must be True or False, got 'yes'"):
        load_adapter("thread_tools:BadDeclaration", [ADAPTERS_DIR])


def test_thread_unsafe_adapter_refused_before_setup(clean_imports, monkeypatch):
    setups = []
    monkeypatch.setattr(Adapter, "setup", lambda self: setups.append(self))
    with pytest.raises(ThreadUnsafeAdapter, match='profile = "process"') as info:
        load_adapter("thread_tools:Unsafe", [ADAPTERS_DIR], threads=2)
    assert "--threads 2" in str(info.value)
    assert setups == [], "refused before setup() runs"
    assert load_adapter("thread_tools:Unsafe", [ADAPTERS_DIR], threads=1).thread_safe is False


def test_thread_safe_adapter_locks():
    class A(ThreadSafeAdapter):
        def __init__(self):
            pass  # no super().__init__(): the helpers must not need it

    a, b = A(), A()
    assert a.thread_safe is True
    assert a.locked() is a.locked("default")
    assert a.locked("x") is a.locked("x") is not a.locked("y")
    assert a.locked("x") is not b.locked("x"), "one set of locks per instance"
    with a.locked("x"):
        with a.locked("x"):  # reentrant
            pass

    # Many threads asking for the same new lock at once all get one lock.
    c = A()
    got = all_at_once(lambda: c.locked("new"))
    assert len(got) == 8 and len({id(lock) for lock in got}) == 1


def test_thread_safe_adapter_thread_local():
    a = ThreadSafeAdapter()
    made = []

    def factory():
        made.append(threading.get_ident())
        return object()

    mine = a.thread_local("conn", factory)
    assert a.thread_local("conn", factory) is mine, "built once per thread"
    assert a.local.conn is mine
    other = []
    t = threading.Thread(target=lambda: other.append(a.thread_local("conn", factory)))
    t.start()
    t.join()
    assert other[0] is not mine
    assert len(made) == 2
    assert not hasattr(ThreadSafeAdapter().local, "conn"), "one threading.local per instance"


# --- idempotent and streaming tools ---------------------------------------------


def test_tool_idempotent_marker():
    class Marked:
        @tool(idempotent=True)
        def safe(self):
            pass

        @tool(idempotent=False)
        def once(self):
            pass

        @tool
        def unmarked(self):
            pass

        @classmethod
        @tool(name="klass", idempotent=True, thread_safe=True)
        def class_method(cls):
            pass

        @tool(idempotent=True)
        @staticmethod
        def static_safe():
            pass

    tools = tools_of_instance(Marked())
    assert {name: t.idempotent for name, t in tools.items()} == {
        "safe": True, "once": False, "unmarked": False, "klass": True, "static_safe": True,
    }
    assert tools["klass"].thread_safe is True
    with pytest.raises(TypeError, match="idempotent.*True or False"):
        tool(idempotent="yes")
    with pytest.raises(TypeError, match="True or False"):
        tool(idempotent=1)

    @tool(idempotent=True)
    def module_level():
        pass

    module = types.ModuleType("m")
    module.module_level = module_level
    assert tools_of_module(module)["module_level"].idempotent is True


def test_tool_streams_for_generator_functions():
    class Gen:
        @tool
        def gen(self):
            yield 1

        @tool
        def plain(self):
            return [1]

        @tool
        def returns_iterator(self):
            return iter([1])

        @staticmethod
        @tool
        def static_gen():
            yield 1

        @tool
        @staticmethod
        def static_gen_below():
            yield 1

        @classmethod
        @tool
        def class_gen(cls):
            yield cls

        @tool
        async def coroutine(self):
            return 1

    tools = tools_of_instance(Gen())
    assert {name: t.streams for name, t in tools.items()} == {
        "gen": True, "plain": False, "returns_iterator": False, "static_gen": True,
        "static_gen_below": True, "class_gen": True, "coroutine": False,
    }

    @tool
    def module_gen():
        yield 1

    module = types.ModuleType("m")
    module.module_gen = module_gen
    module.static = staticmethod(tool(name="static-in-module")(lambda: (yield 1)))
    found = tools_of_module(module)
    assert found["module_gen"].streams is True
    assert found["static-in-module"].streams is True


def test_load_streaming_adapter(clean_imports):
    loaded = load_adapter("streaming_tools:Streams", [ADAPTERS_DIR])
    tools = loaded.tools
    assert tools["count"].streams and tools["class-stream"].streams and tools["static_stream"].streams
    assert not tools["plain_list"].streams and not tools["add"].streams, "inherited plain tools"
    assert sorted(n for n, t in tools.items() if t.idempotent) == ["static_stream", "wait_cancelled"]
    module = load_adapter("streaming_tools", [ADAPTERS_DIR])
    assert sorted(module.tools) == ["module_plain", "module_stream"]
    assert module.tools["module_stream"].streams and module.tools["module_plain"].idempotent
