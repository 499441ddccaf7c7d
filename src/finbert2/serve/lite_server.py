"""One Milvus Lite file served on a TCP address, so that several serve workers share one index.

    python -m finbert2.serve.lite_server index.db 127.0.0.1:19530
    finbert2 serve --index http://127.0.0.1:19530 ...   # in each worker

Milvus Lite 2.5 lets one process open a file: ``--index FILE.db`` starts the engine (a C++ child process,
``milvus_lite/lib/milvus``) for that process alone, on a unix socket. This starts the same engine on a
TCP address instead (``milvus_lite.server.Server(file, address)``), speaking the Milvus client protocol, and
runs until SIGTERM or Ctrl-C, which stop the engine. Bind it to loopback: the engine has no authentication.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

from finbert2.errors import ConfigError
from finbert2.serve.milvus_store import check_milvus_uri

READY_SECONDS = 60.0


def start(path: str, address: str, timeout: float = READY_SECONDS):
    """The engine serving ``path`` on ``address`` (``host:port``), started and answering a client."""
    from milvus_lite.server import Server
    from pymilvus import MilvusClient

    check_milvus_uri(path, "FILE")
    server = Server(path, address)
    if not server.init() or not server.start():
        raise ConfigError(f"{path}: Milvus Lite did not start (is the file open in another process?)")
    deadline = time.monotonic() + timeout
    while True:
        try:
            MilvusClient(uri=f"http://{address}", timeout=2).close()
            return server
        except Exception:
            if time.monotonic() > deadline or server._p.poll() is not None:
                stop(server)
                raise ConfigError(f"{path}: Milvus Lite did not answer on {address}") from None
            time.sleep(0.2)


def stop(server) -> None:
    """Stop the engine: SIGTERM, then ``Server.stop`` (which SIGKILLs it after 2 s)."""
    if server._p is not None and server._p.poll() is None:
        server._p.terminate()
    server.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] in {"-h", "--help"}:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        server = start(*argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"serving {argv[0]} on http://{argv[1]}", flush=True)
    while not done.wait(0.5) and server._p.poll() is None:
        pass
    stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
