"""A Snakepit-style worker for the round-trip benchmark: one Python process
per worker, each a grpcio server with a single thread, serving the same
no-op function as examples/adapter.py's. The method takes and returns raw
bytes (a generic handler, no generated code): the bench's tonic client
sends an empty message and reads one back.

The bench starts one process per worker: each serves on a free loopback
port, prints it, and serves until its stdin closes."""

import os
import sys
from concurrent import futures

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
from adapter import Example  # noqa: E402

_EXAMPLE = Example()


def _noop(request, context):
    _EXAMPLE.noop()
    return b""


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    handler = grpc.method_handlers_generic_handler(
        "bench.Worker",
        {"Noop": grpc.unary_unary_rpc_method_handler(_noop, lambda b: b, lambda b: b)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
