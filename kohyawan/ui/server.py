"""Start the web server: bind the socket first (so a port in use is one clear line and port 0 works),
print the address (with the token when there is one), then serve with uvicorn until Ctrl-C."""

from __future__ import annotations

import socket
import sys

from kohyawan.errors import BadInput
from kohyawan.ui.config import UiConfig


def bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BadInput(f"--host {host}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise BadInput(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(cfg: UiConfig, port: int) -> str:
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    return f"http://{host}:{port}/" + (f"?token={cfg.token}" if cfg.token else "")


def serve(cfg: UiConfig, *, out=None) -> None:
    import uvicorn

    from kohyawan.ui.app import create_app

    out = out or sys.stderr
    app = create_app(cfg)   # sets cfg.token for a non-local bind
    sock = bind(cfg.host, cfg.port)
    port = sock.getsockname()[1]
    print(f"kohyawan ui on {url_of(cfg, port)}", file=out, flush=True)
    if cfg.token:
        print("every request needs the token: open the address above once (it sets a cookie), or send "
              "'Authorization: Bearer TOKEN'", file=out, flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, access_log=False)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
