"""Record every host a process looks up or connects to (for ``test_storage_endpoint.py``).

``install(path)`` wraps ``socket.getaddrinfo`` and ``socket.socket.connect`` / ``connect_ex`` (what
urllib3, botocore and aiohttp end up calling) so that each call appends one JSON line to ``path``
before doing what it did. Usage in a subprocess:
``python -c "import hostspy; hostspy.install(PATH); ..."``.
"""

from __future__ import annotations

import json
import socket


def install(path: str) -> None:
    real_getaddrinfo, real_connect, real_connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex

    def note(kind: str, host, port) -> None:
        with open(path, "a") as fh:
            fh.write(json.dumps({"kind": kind, "host": str(host), "port": port}) + "\n")

    def getaddrinfo(host, port, *args, **kwargs):
        note("lookup", host, port)
        return real_getaddrinfo(host, port, *args, **kwargs)

    def connect(self, address):
        if isinstance(address, tuple):
            note("connect", address[0], address[1])
        return real_connect(self, address)

    def connect_ex(self, address):
        if isinstance(address, tuple):
            note("connect", address[0], address[1])
        return real_connect_ex(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
