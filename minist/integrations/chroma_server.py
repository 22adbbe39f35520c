"""A Chroma server for minist: ``ChromaServer`` runs ``chroma run`` on a free local port, ``connect`` opens a client.

    pip install "minist[chroma]"

>>> with ChromaServer("chroma-data") as server:  # doctest: +SKIP
...     collection = open_collection(connect(server.url), "faq", model)

``connect(where)`` takes a folder (an embedded database, ``chromadb.PersistentClient``) or a server's URL
(``chromadb.HttpClient``); a URL where no server answers is a ConnectionError that names it and says how to
start one, and so is a server that goes away in the middle of a call (``server_errors``).
``ChromaServer`` listens on 127.0.0.1 only, writes its log to a file (a pipe nobody reads would fill and stall
it), and is stopped by its process id: by ``stop()``, at the end of a ``with``, or when Python exits.
Left out: authentication, TLS certificates, Chroma Cloud.
"""

from __future__ import annotations

import atexit
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

try:
    import chromadb
    import httpx
except ImportError as error:
    raise ImportError('minist.integrations.chroma needs chromadb: pip install "minist[chroma]"') from error


@contextmanager
def server_errors(client) -> Iterator[None]:
    """Turn "connection refused" into an error that names the server's URL and how to start one."""
    try:
        yield
    except (httpx.TransportError, ConnectionError) as error:
        server = getattr(client, "_server", client)  # a ClientAPI wraps the server API that knows the URL
        url = server.get_api_url() if hasattr(server, "get_api_url") else "the Chroma server"
        raise ConnectionError(f"No Chroma server answers at {url} ({error}). Start one with "
                              "`chroma run --path DIR --host HOST --port PORT`, or minist's ChromaServer.") from None


def connect(where: str | Path):
    """A Chroma client: of the server at a URL ("http://127.0.0.1:8000"), or of the database in a folder.

    A URL where no server answers is a ConnectionError that names it and says how to start one.
    """
    url = urlsplit(str(where))
    if url.scheme not in ("http", "https"):
        return chromadb.PersistentClient(str(where))
    try:
        return chromadb.HttpClient(host=url.hostname, port=url.port or 8000, ssl=url.scheme == "https")
    except ValueError as error:  # chromadb: "Could not connect to a Chroma server. Are you sure it is running?"
        raise ConnectionError(f"No Chroma server answers at {where} ({error}). Start one with `chroma run --path "
                              f"DIR --host {url.hostname} --port {url.port or 8000}`.") from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) != 0


class ChromaServer:
    """``chroma run`` on a free port of 127.0.0.1, its data in ``path``; ``stop()`` (or ``with``) ends it.

    >>> with ChromaServer("chroma-data") as server:  # doctest: +SKIP
    ...     client = server.client()
    """

    def __init__(self, path: str | Path, port: int | None = None, host: str = "127.0.0.1", timeout: float = 60):
        self.path, self.host, self.port = Path(path), host, port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        if port and not port_is_free(host, port):  # else the server there would answer for the one that failed
            raise RuntimeError(f"Port {port} of {host} is taken; leave port=None for a free one.")
        chroma = Path(sys.executable).with_name("chroma")  # the one beside this Python, not another on PATH
        command = [str(chroma), "run", "--path", str(self.path), "--host", host, "--port", str(self.port)]
        # Its log goes to a file: a pipe nobody reads fills up (it logs every request) and stalls the server.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (open as long as the server runs; closed by stop)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        atexit.register(self.stop)  # no orphan when the notebook's kernel or the script ends
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                why = f"it exited with code {code}" if (code := self.process.poll()) else f"in {timeout:g} s"
                self.log.seek(0)
                output = self.log.read().decode(errors="replace")[-1500:]
                self.stop()
                raise RuntimeError(f"`{' '.join(command)}` did not answer at {self.url} ({why}). Its output "
                                   f"ends:\n{output}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/api/v2/heartbeat", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def client(self):
        return connect(self.url)

    def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL after 10 s); stopping twice is harmless."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        atexit.unregister(self.stop)

    def __enter__(self) -> ChromaServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
