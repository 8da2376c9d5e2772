"""`evilm serve`: check the request, bind, run uvicorn until SIGTERM or Ctrl-C (docs/serving.md).

The address defaults to 127.0.0.1; another is refused without a token unless `insecure` (a
search service on a lab network without a password would expose the collection). The socket is
bound here, before uvicorn starts, so `--port 0` can say which port it got and a port in use is
a clear error; it is made with IPPROTO_TCP so asyncio sets TCP_NODELAY (without it every small
response waited ~40 ms for a delayed ACK). On SIGTERM the server stops accepting, lets in-flight
requests finish (at most `graceful_s`) and the command exits 0.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sys
from typing import Callable

from evilm_core.errors import EvilmError
from evilm_core.retrieval.index import read_meta
from evilm_core.serve.service import ServeConfig, Service

log = logging.getLogger("evilm.serve")


def check_config(config: ServeConfig, insecure: bool = False) -> None:
    """Refusals before anything binds: an index that is not one, a public address without a token."""
    if not config.indexes:
        raise EvilmError("give at least one --index DIR (or NAME=DIR)")
    for name, directory in config.indexes.items():
        read_meta(directory)  # the error names the directory and how to build an index there
    if config.qa:
        from evilm_core.predict.answer import answering_checkpoint

        answering_checkpoint(config.qa)  # a wrong checkpoint is refused now, not after the indexes load
    if not _loopback(config.host) and not config.token and not insecure:
        raise EvilmError(f"--host {config.host} would serve the collection beyond this machine without a password: "
                         "give --token (or the EVILM_SERVE_TOKEN environment variable), or --insecure to serve it "
                         "without one, or keep the default 127.0.0.1")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise EvilmError(f"cannot listen on {host}:{port}: {err.strerror}; choose another --port (0: any free "
                         "port) or --host") from None
    sock.listen(2048)
    return sock


def run_server(config: ServeConfig, announce: Callable[[str], None] = lambda url: None) -> None:
    """Serve until stopped; `announce(url)` is called once the socket listens."""
    import uvicorn

    from evilm_core.serve.app import create_app

    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    app = create_app(Service(config))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=config.graceful_s))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # what uvicorn re-raises once it has drained
    announce(f"http://{host if ':' not in host else f'[{host}]'}:{port}/")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def parse_indexes(specs: list[str]) -> dict[str, str]:
    """--index DIR or NAME=DIR, repeatable -> {name: dir}; a bare DIR is named after its folder."""
    indexes: dict[str, str] = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep:
            name, directory = spec.rstrip("/").split("/")[-1] or "index", spec
        if not name or not directory:
            raise EvilmError(f"--index {spec!r}: expected DIR or NAME=DIR")
        if name in indexes:
            raise EvilmError(f"--index {spec!r}: the name {name!r} is given twice; name them NAME=DIR")
        indexes[name] = directory
    return indexes


def serve(index: list[str], host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          insecure: bool = False, device: str = "auto", precision: str = "fp32", threads: int = 0,
          runtime: str = "auto", announce: Callable[[str], None] = lambda url: None, **limits) -> None:
    """What `evilm serve` does: resolve the run settings once, check, bind and run until stopped.
    `limits`: ServeConfig's fields (max_batch, max_wait_ms, max_k, exact, ...)."""
    from evilm_core.settings import resolve_settings

    config = ServeConfig(parse_indexes(index), settings=None, host=host, port=port, token=token or None, **limits)
    check_config(config, insecure)
    config.settings = resolve_settings(device, precision, threads, "auto", runtime=runtime)
    run_server(config, announce)
