"""The dashboard makes no request to another host, server side: app.py and every page of its
navigation run under AppTest with the socket layer guarded (``connect``, ``connect_ex``,
``sendto`` and name lookups of anything but loopback are recorded and refused). The browser
side (every request the pages make, favicons and fonts included) is recorded by the real-browser
suite (``tests/acceptance/test_browser.py``: ``Watch`` fails any page that requests another host)."""
from __future__ import annotations

import ipaddress
import socket
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def is_loopback(host) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host is None:
        return True  # getaddrinfo(None, port): a local bind address
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host.lower() in ("localhost", "localhost.localdomain", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # any other host name


class SocketGuard:
    """Records (in :attr:`foreign`) and refuses every attempt to reach another host."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.foreign: list[str] = []
        real = {name: getattr(socket.socket, name) for name in ("connect", "connect_ex", "sendto")}
        real_getaddrinfo = socket.getaddrinfo

        def refuse(what: str):
            self.foreign.append(what)
            raise ConnectionRefusedError(f"test guard: no request to another host ({what})")

        def address_ok(sock, address) -> bool:
            return sock.family not in (socket.AF_INET, socket.AF_INET6) or is_loopback(address[0])

        def connect(sock, address):
            if not address_ok(sock, address):
                refuse(f"connect {address}")
            return real["connect"](sock, address)

        def connect_ex(sock, address):
            if not address_ok(sock, address):
                refuse(f"connect_ex {address}")
            return real["connect_ex"](sock, address)

        def sendto(sock, data, *args):
            address = args[-1]
            if not address_ok(sock, address):
                refuse(f"sendto {address}")
            return real["sendto"](sock, data, *args)

        def getaddrinfo(host, *args, **kw):
            if not is_loopback(host):
                self.foreign.append(f"lookup {host}")
                raise socket.gaierror(socket.EAI_NONAME, f"test guard: no lookup of {host}")
            return real_getaddrinfo(host, *args, **kw)

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
        monkeypatch.setattr(socket.socket, "sendto", sendto)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_the_guard_sees_foreign_requests_and_lets_loopback_through(monkeypatch):
    guard = SocketGuard(monkeypatch)
    with pytest.raises(OSError):
        urllib.request.urlopen("http://example.com/", timeout=5)
    with pytest.raises(OSError):
        socket.create_connection(("192.0.2.1", 80), timeout=5)  # TEST-NET-1, by address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
        s.sendto(b"x", ("8.8.8.8", 53))
    assert guard.foreign[0] == "lookup example.com" and "192.0.2.1" in guard.foreign[1], guard.foreign
    assert guard.foreign[-1] == "sendto ('8.8.8.8', 53)" and len(guard.foreign) == 3, guard.foreign
    with socket.socket() as server:  # loopback works
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    assert len(guard.foreign) == 3


def test_every_page_makes_no_request_to_another_host(install_run, tiny_run_dir, monkeypatch, tmp_path):
    """A tiny MLP run and a tiny GPT-2 folder (transformers loads it: no hub request)."""
    import streamlit
    from streamlit.testing.v1 import AppTest

    import _lm_models as M

    M.save_model_folder(tmp_path / "models" / "tiny-gpt2", "gpt2", layers=2, d=16)
    monkeypatch.setenv("ENTK_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ENTK_OFFER_GGUF_PACKAGE", "0")  # the real Gemma: tests/acceptance/test_gemma.py

    seen: list = []
    real_navigation = streamlit.navigation

    def navigation(pages, *a, **kw):  # the pages app.py registers, in its order
        flat = [p for section in pages.values() for p in section] if isinstance(pages, dict) else list(pages)
        seen[:] = [getattr(p, "_page", None) for p in flat]
        return real_navigation(pages, *a, **kw)

    monkeypatch.setattr(streamlit, "navigation", navigation)
    install_run(tiny_run_dir)
    guard = SocketGuard(monkeypatch)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=180).run()
    assert not at.exception, [e.value for e in at.exception]
    files = [Path(p) for p in seen if isinstance(p, (str, Path))]
    assert len(files) >= 5, seen
    for f in files:
        at.switch_page(str(f.relative_to(REPO) if f.is_absolute() else f)).run()
        assert not at.exception, (f, [e.value for e in at.exception])
    assert guard.foreign == []
