"""python -m pitboss_worker --adapter SPEC --socket PATH [--threads N] [--path DIR]... [--thread-safety-checks]
[--call-spin-us US] [--session-idle-s S]"""

import argparse
import socket
import sys
import traceback

from ._version import __version__
from .adapter import AdapterError, load_adapter
from .call_context import DEFAULT_SESSION_IDLE_S, configure_sessions
from .dispatch import Dispatcher, warm_up
from .threadcheck import CheckingDispatcher, ThreadSafetyChecker
from .worker import (
    DEFAULT_CALL_SPIN_US,
    EXIT_ADAPTER,
    EXIT_CONNECT,
    Worker,
    log,
    watch_parent,
    worker_facts,
)


def _int_at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not an integer" % (text,)) from None
        if value < minimum:
            raise argparse.ArgumentTypeError("must be at least %d, got %d" % (minimum, value))
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m pitboss_worker",
        description="A pitboss worker: serves the tools of one Python adapter to the pitboss host "
        "over a Unix socket. The host starts it; see docs/protocol.md.",
        allow_abbrev=False,
    )
    parser.add_argument("--adapter", required=True, metavar="SPEC",
                        help="'module:Class' (instantiated, setup() called, @tool methods served) "
                        "or 'module' (@tool functions served)")
    parser.add_argument("--socket", required=True, metavar="PATH",
                        help="Unix socket the host listens on; the worker connects to it")
    parser.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                        help="calls served at once (default 1: one call at a time)")
    parser.add_argument("--path", action="append", default=[], metavar="DIR",
                        help="directory put at the front of sys.path before importing the adapter "
                        "(repeatable; the current directory is always added)")
    parser.add_argument("--thread-safety-checks", action="store_true",
                        help="warn (stderr) when a tool not marked thread-safe runs on two threads at once, "
                        "and about loaded modules known to be unsafe to share across threads")
    parser.add_argument("--call-spin-us", type=_non_negative_int, default=DEFAULT_CALL_SPIN_US, metavar="US",
                        help="after a call, poll the call connection this many microseconds before sleeping "
                             "(default %(default)s; 0 sleeps at once and burns no CPU)")
    parser.add_argument("--session-idle-s", type=_positive_int, default=DEFAULT_SESSION_IDLE_S, metavar="S",
                        help="drop a session's state (context.session_state) after this many seconds "
                             "without use (default %(default)s)")
    parser.add_argument("--version", action="version", version="pitboss-worker " + __version__)
    return parser


def main(argv=None):
    """Run a worker; returns the process exit status."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        log("warning: ignoring unknown arguments: %s" % " ".join(unknown))

    # Both connections before the import: the host then sees a failed
    # import as the end of stream at once. It accepts them in this order.
    connections = []
    for name in ("control", "call"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(args.socket)
        except OSError as exc:
            log("error: cannot connect to the host socket %r (%s connection): %s" % (args.socket, name, exc))
            return EXIT_CONNECT
        connections.append(sock)
    control_sock, call_sock = connections

    try:
        loaded = load_adapter(args.adapter, args.path, threads=args.threads)
    except AdapterError as exc:
        log("error: cannot load adapter %r: %s" % (args.adapter, exc))
        return EXIT_ADAPTER
    except BaseException:
        log("error: cannot load adapter %r:" % (args.adapter,))
        traceback.print_exc()
        sys.stderr.flush()
        return EXIT_ADAPTER

    if args.threads > 1 and loaded.thread_safe is None:
        log(
            "warning: adapter %r does not declare thread_safe, yet serves %d calls at once on threads "
            "sharing one instance: declare thread_safe = True (or subclass ThreadSafeAdapter) if it is "
            "thread-safe, or thread_safe = False to make thread pools refuse it" % (args.adapter, args.threads)
        )
    unsafe_modules = ()
    if args.thread_safety_checks:
        checker = ThreadSafetyChecker(loaded.tools, loaded.thread_safe, log)
        checker.scan_modules()
        unsafe_modules = checker.unsafe_modules
        dispatcher = CheckingDispatcher(loaded.tools, checker)
    else:
        dispatcher = Dispatcher(loaded.tools)
    warm_up()
    # No thread of ours may start before the adapter is loaded: on a
    # free-threaded 3.13 the first thread start immortalizes the functions
    # and code objects that exist then, so the adapter's own functions are
    # not refcounted by every thread that calls them (measured: two threads
    # running a recursive tool went from 1.1x to 1.9x one thread's rate).
    # Until then a parent that dies is caught by the PR_SET_PDEATHSIG the
    # host sets at spawn.
    configure_sessions(args.session_idle_s)
    watch_parent()
    tools = loaded.tools.values()
    facts = worker_facts(
        args.adapter, dispatcher.tool_names, args.threads, loaded.thread_safe, unsafe_modules,
        streaming_tools=[t.name for t in tools if t.streams],
        idempotent_tools=[t.name for t in tools if t.idempotent],
    )
    status = Worker(control_sock, call_sock, dispatcher, facts, threads=args.threads,
                    call_spin_us=args.call_spin_us).serve()
    for sock in connections:
        try:
            sock.close()
        except OSError:
            pass
    return status


def console_main():
    """Entry point of the `pitboss-worker` console script."""
    sys.exit(main())
