"""The physical floor for the round-trip benchmark: a plain Python process
that echoes length-prefixed frames over a Unix socket, one at a time, with
nothing else in the way (no dispatch, no tool lookup, no JSON). Connects to
the socket given as its argument and echoes until the host closes it."""

import socket
import struct
import sys


def read_exactly(conn, size):
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = conn.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return buffer


def main():
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(sys.argv[1])
    while True:
        header = read_exactly(conn, 4)
        if header is None:
            return
        (size,) = struct.unpack(">I", header)
        body = read_exactly(conn, size)
        if body is None:
            return
        conn.sendall(bytes(header) + bytes(body))


if __name__ == "__main__":
    main()
