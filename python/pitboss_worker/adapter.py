"""The adapter API: @tool, the Adapter base class, and loading an adapter spec.

An adapter spec is either ``module:Class`` (the class is instantiated with no
arguments, its ``setup()`` runs once, and its @tool methods are the tools) or
``module`` (the module's @tool functions are the tools).
"""

import importlib
import inspect
import os
import sys
import threading

#: Attribute that @tool sets on the function it marks; its value is the tool name.
TOOL_ATTRIBUTE = "__pitboss_tool__"
#: Attribute that @tool(thread_safe=...) sets on the function it marks.
THREAD_SAFE_ATTRIBUTE = "__pitboss_thread_safe__"
#: Attribute that @tool(idempotent=...) sets on the function it marks.
IDEMPOTENT_ATTRIBUTE = "__pitboss_idempotent__"
MAX_TOOL_NAME_BYTES = 0xFFFF


class AdapterError(Exception):
    """An adapter spec that cannot be turned into a set of tools."""


class ThreadUnsafeAdapter(AdapterError):
    """An adapter that declares thread_safe = False, asked to serve calls on several threads."""


def _check_tool_name(name):
    if not isinstance(name, str):
        raise TypeError("a tool name must be a str, got %r" % (name,))
    if not name:
        raise ValueError("a tool name must not be empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("tool name %r is not encodable as UTF-8" % (name,)) from None
    if size > MAX_TOOL_NAME_BYTES:
        raise ValueError("tool name is %d bytes of UTF-8, the limit is %d" % (size, MAX_TOOL_NAME_BYTES))


def _check_flag(value, what):
    if value is not None and not isinstance(value, bool):
        raise TypeError("%s must be True or False, got %r" % (what, value))


def _underlying_function(func):
    """The plain function behind a bound method, staticmethod or classmethod."""
    while True:
        inner = getattr(func, "__func__", None)
        if inner is None or inner is func:
            return func
        func = inner


def is_streaming(func):
    """True for a generator function (or a method, staticmethod or
    classmethod of one): a tool whose answer is a stream."""
    try:
        return inspect.isgeneratorfunction(_underlying_function(func))
    except Exception:  # objects with exotic __getattr__
        return False


def tool(func=None, *, name=None, thread_safe=None, idempotent=None):
    """Mark a method or function as a tool the host can call.

    ``@tool`` names the tool after the function; ``@tool(name="other-name")``
    (or ``@tool("other-name")``) names it explicitly. Works on methods of an
    adapter class (including staticmethod/classmethod) and on module-level
    functions. Returns the function unchanged.

    ``thread_safe=True`` vouches that the tool may run on several threads at
    once (``False``: it may not); unset, the adapter's own ``thread_safe``
    decides. Only ``--thread-safety-checks`` looks at it.

    ``idempotent=True`` vouches that running the tool twice with the same
    arguments is safe (no effect beyond the first run's, or none at all): the
    host then retries such a call on another worker after a crash or a
    timeout, when the pool's ``retries`` allows. Unmarked (or ``False``), a
    call that may have run is never run again.

    A generator function is a streaming tool: called as a stream, each item
    it yields is sent as one chunk (see pitboss_worker.context for the call
    it runs in).
    """
    if isinstance(func, str) and name is None:
        func, name = None, func
    if name is not None:
        _check_tool_name(name)
    _check_flag(thread_safe, "@tool(thread_safe=...)")
    _check_flag(idempotent, "@tool(idempotent=...)")

    def mark(f):
        target = f.__func__ if isinstance(f, (staticmethod, classmethod)) else f
        if not callable(target):
            raise TypeError("@tool marks functions and methods, not %r" % (f,))
        tool_name = name if name is not None else getattr(target, "__name__", None)
        if tool_name is None or tool_name == "<lambda>":
            raise ValueError("@tool needs name=... for %r" % (f,))
        _check_tool_name(tool_name)
        try:
            setattr(target, TOOL_ATTRIBUTE, tool_name)
            if thread_safe is not None:
                setattr(target, THREAD_SAFE_ATTRIBUTE, thread_safe)
            if idempotent is not None:
                setattr(target, IDEMPOTENT_ATTRIBUTE, idempotent)
        except (AttributeError, TypeError):
            raise TypeError("@tool cannot mark %r (it takes no attributes)" % (f,)) from None
        return f

    if func is None:
        return mark
    return mark(func)


class Adapter:
    """Optional base class for adapters.

    Any class works as an adapter (it needs a no-argument constructor); this
    one only documents the hook. Subclass it and mark methods with @tool.
    """

    def setup(self):
        """Runs once per worker process, after construction and before the
        worker reports ready. Load models, open connections, warm caches here.
        An exception here makes the worker exit with status 3."""


class _SharedState:
    __slots__ = ("locks", "local")

    def __init__(self):
        self.locks = {}
        self.local = threading.local()


_SHARED_STATE_ATTRIBUTE = "_pitboss_shared_state"


class ThreadSafeAdapter(Adapter):
    """Base class for an adapter whose tools may run on several threads at
    once (``--threads N``): it declares ``thread_safe = True`` and gives the
    tools two helpers for the state they share, :meth:`locked` and
    :meth:`thread_local` (or :attr:`local`).

    Subclasses need not call ``super().__init__()``: the helpers create what
    they need on first use.
    """

    thread_safe = True

    def _shared_state(self):
        state = self.__dict__.get(_SHARED_STATE_ATTRIBUTE)
        if state is None:
            # dict.setdefault is one atomic step, with or without the GIL:
            # threads racing here all get the state that was stored first.
            state = self.__dict__.setdefault(_SHARED_STATE_ATTRIBUTE, _SharedState())
        return state

    def locked(self, name="default"):
        """The lock called `name` (a str), one per adapter instance, created
        on first use: ``with self.locked("cache"): ...``. It is reentrant: a
        thread that holds it may take it again."""
        locks = self._shared_state().locks
        lock = locks.get(name)
        if lock is None:
            lock = locks.setdefault(name, threading.RLock())
        return lock

    @property
    def local(self):
        """A ``threading.local`` of this instance: what a thread stores on it
        only that thread sees."""
        return self._shared_state().local

    def thread_local(self, name, factory):
        """The calling thread's own object `name`, made by ``factory()`` the
        first time that thread asks, e.g. one database connection per thread:
        ``self.thread_local("db", lambda: sqlite3.connect(path))``. Kept as
        ``self.local.<name>``."""
        local = self.local
        try:
            return getattr(local, name)
        except AttributeError:
            value = factory()
            setattr(local, name, value)
            return value


def _binds_before_running(func):
    """True when calling `func` binds its arguments, against the signature
    the worker checks, before any of its code (or a wrapper's) runs: a
    Python function, or a method of one, without a `__signature__` of its
    own (which may be stricter than what the function accepts)."""
    func = getattr(func, "__func__", func)
    return inspect.isfunction(func) and not hasattr(func, "__wrapped__") and "__signature__" not in vars(func)


class Tool:
    """One callable tool: its name, the bound callable, its signature (None
    when Python cannot tell, in which case arguments are not checked before
    the call), its own thread-safety marker (True, False, or None when
    @tool did not say), whether it is marked idempotent (a bool:
    @tool(idempotent=True)) and whether it streams (a bool: a generator
    function)."""

    __slots__ = ("name", "func", "signature", "bind_first", "thread_safe", "idempotent", "streams")

    def __init__(self, name, func, thread_safe=None, idempotent=None):
        self.name = name
        self.func = func
        self.thread_safe = thread_safe
        self.idempotent = idempotent is True
        self.streams = is_streaming(func)
        try:
            self.signature = inspect.signature(func)
        except (TypeError, ValueError):
            self.signature = None
        # Arguments are bound before the call only where the call itself
        # might run code first (a wrapper, a callable object): a plain
        # function or method binds them before its first line, so the
        # dispatcher checks them only when that fails, and a call with
        # good arguments skips inspect's bind (most of a no-op's dispatch).
        self.bind_first = self.signature is not None and not _binds_before_running(func)

    def __repr__(self):
        return "Tool(%r, %r)" % (self.name, self.func)


_NOT_A_TOOL = (None, None, None)


def _marker(value):
    """(tool name, thread_safe marker, idempotent marker) of a @tool
    function, (None, None, None) otherwise."""
    raw = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
    try:
        name = getattr(raw, TOOL_ATTRIBUTE, None)
    except Exception:  # objects with exotic __getattr__
        return _NOT_A_TOOL
    if not isinstance(name, str):
        return _NOT_A_TOOL
    return name, getattr(raw, THREAD_SAFE_ATTRIBUTE, None), getattr(raw, IDEMPOTENT_ATTRIBUTE, None)


def tools_of_instance(instance):
    """{tool name: Tool} for the @tool methods of an adapter instance.

    The most derived definition of an attribute decides: a subclass that
    overrides a tool method without @tool removes the tool.
    """
    marked = {}  # attribute name -> (tool name, thread_safe marker, idempotent marker)
    for klass in reversed(type(instance).__mro__):
        for attr, value in vars(klass).items():
            found = _marker(value)
            if found[0] is None:
                marked.pop(attr, None)
            else:
                marked[attr] = found
    tools = {}
    for attr, (tool_name, thread_safe, idempotent) in marked.items():
        if tool_name in tools:
            raise AdapterError(
                "two methods of %s are both the tool %r" % (type(instance).__qualname__, tool_name)
            )
        tools[tool_name] = Tool(tool_name, getattr(instance, attr), thread_safe, idempotent)
    return tools


def tools_of_module(module):
    """{tool name: Tool} for the @tool functions found in a module's namespace."""
    tools = {}
    for value in list(vars(module).values()):
        if isinstance(value, type) or not callable(value):
            continue
        tool_name, thread_safe, idempotent = _marker(value)
        if tool_name is None:
            continue
        existing = tools.get(tool_name)
        if existing is not None:
            if existing.func is value:
                continue
            raise AdapterError("two functions of %s are both the tool %r" % (module.__name__, tool_name))
        tools[tool_name] = Tool(tool_name, value, thread_safe, idempotent)
    return tools


def collect_tools(target):
    """{tool name: Tool} for a module or an adapter instance."""
    if inspect.ismodule(target):
        return tools_of_module(target)
    return tools_of_instance(target)


class LoadedAdapter:
    """The result of load_adapter: the spec, the module, the instance (None
    for a module spec), the tools, and the adapter's thread_safe
    declaration (True, False, or None when it declares nothing)."""

    __slots__ = ("spec", "module", "instance", "tools", "thread_safe")

    def __init__(self, spec, module, instance, tools, thread_safe=None):
        self.spec = spec
        self.module = module
        self.instance = instance
        self.tools = tools
        self.thread_safe = thread_safe


def declared_thread_safety(target):
    """The `thread_safe` attribute of an adapter instance (its class's) or
    module: True, False, or None when absent; AdapterError for another value."""
    value = getattr(target, "thread_safe", None)
    try:
        _check_flag(value, "thread_safe")
    except TypeError as exc:
        raise AdapterError(str(exc)) from None
    return value


def _check_threads(thread_safe, threads):
    # Before setup(), which may take minutes to load a model.
    if threads > 1 and thread_safe is False:
        raise ThreadUnsafeAdapter(
            "it declares thread_safe = False, so it cannot serve %d calls at once (--threads %d): "
            'run it in a process pool (profile = "process", one call per worker process), or make it '
            "thread-safe and declare thread_safe = True" % (threads, threads)
        )


def parse_spec(spec):
    """('module', 'Class') or ('module', None); AdapterError when malformed."""
    module_name, sep, attr_path = spec.partition(":")
    module_name = module_name.strip()
    attr_path = attr_path.strip()
    if not module_name or (sep and not attr_path) or ":" in attr_path:
        raise AdapterError("an adapter spec is 'module' or 'module:Class', got %r" % (spec,))
    return module_name, (attr_path or None)


def extend_sys_path(paths=(), include_cwd=True):
    """Put the --path directories (in order), then the current directory, at
    the front of sys.path, without duplicates."""
    wanted = [os.path.abspath(p) for p in paths]
    if include_cwd:
        wanted.append(os.getcwd())
    front = []
    for entry in wanted:
        if entry not in front:
            front.append(entry)
    sys.path[:] = front + [p for p in sys.path if p not in front and not (include_cwd and p == "")]


def load_adapter(spec, paths=(), include_cwd=True, threads=1):
    """Import the adapter, instantiate and set it up (class spec), collect its tools.

    Exceptions from the adapter's own code (import, constructor, setup)
    propagate unchanged; problems with the spec itself raise AdapterError,
    and an adapter declaring thread_safe = False with threads > 1 raises
    ThreadUnsafeAdapter before its setup() runs.
    """
    module_name, attr_path = parse_spec(spec)
    extend_sys_path(paths, include_cwd=include_cwd)
    module = importlib.import_module(module_name)
    instance = None
    if attr_path is None:
        thread_safe = declared_thread_safety(module)
        _check_threads(thread_safe, threads)
        tools = tools_of_module(module)
    else:
        factory = module
        for part in attr_path.split("."):
            try:
                factory = getattr(factory, part)
            except AttributeError:
                raise AdapterError(
                    "module %r has no attribute %r (adapter spec %r)" % (module_name, attr_path, spec)
                ) from None
        if not callable(factory):
            raise AdapterError("%s:%s is not a class" % (module_name, attr_path))
        instance = factory()
        thread_safe = declared_thread_safety(instance)
        _check_threads(thread_safe, threads)
        setup = getattr(instance, "setup", None)
        if setup is not None:
            if not callable(setup):
                raise AdapterError("%s:%s.setup is not callable" % (module_name, attr_path))
            setup()
        tools = tools_of_instance(instance)
    if not tools:
        raise AdapterError("adapter %r defines no @tool %s" % (spec, "functions" if attr_path is None else "methods"))
    return LoadedAdapter(spec, module, instance, tools, thread_safe)
