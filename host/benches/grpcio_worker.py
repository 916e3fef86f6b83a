"""A Snakepit-style worker for the round-trip benchmark: one Python process
per worker, each a grpcio server with a single thread, serving the same
functions as pitboss's workers (workloads.py). The methods take and return
raw bytes (generic handlers, no generated code):

- ``Noop``: an empty message in, an empty message back;
- ``Stamp``: a ``google.protobuf.BytesValue`` holding the JSON object
  ``{"data": ...}`` in, one holding ``workloads.stamp``'s JSON answer back
  (what the tonic client sends as a prost ``Vec<u8>``).

The bench starts one process per worker: each serves on a free loopback
port, prints it, and serves until its stdin closes."""

import json
import sys
from concurrent import futures

import grpc

from workloads import noop, stamp


def _noop(request, context):
    noop()
    return b""


def _read_varint(data, at):
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7


def _bytes_value(message):
    """The bytes in a BytesValue (field 1); empty when the field is absent."""
    if not message:
        return b""
    if message[0] != 0x0A:
        raise ValueError("not a BytesValue: first tag %#x" % message[0])
    length, at = _read_varint(message, 1)
    return message[at:at + length]


def _as_bytes_value(data):
    length, prefix = len(data), bytearray([0x0A])
    while length >= 0x80:
        prefix.append(length & 0x7F | 0x80)
        length >>= 7
    prefix.append(length)
    return bytes(prefix) + data


def _stamp(request, context):
    arguments = json.loads(_bytes_value(request))
    return _as_bytes_value(json.dumps(stamp(**arguments)).encode())


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    identity = (lambda b: b, lambda b: b)
    handler = grpc.method_handlers_generic_handler(
        "bench.Worker",
        {
            "Noop": grpc.unary_unary_rpc_method_handler(_noop, *identity),
            "Stamp": grpc.unary_unary_rpc_method_handler(_stamp, *identity),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
