"""Start and stop a private mosquitto broker on 127.0.0.1, for tests, benchmarks and demos.

with Mosquitto() as broker:
    cfg = TransportConfig(kind="mqtt", node=0, broker_port=broker.port)
    broker.stop(); broker.start()  # a broker restart on the same port

With `keys` (a folder from `gossipser keys`) and `acl` (`acl_text`), the broker listens with
TLS only, requires a client certificate of the run's CA, takes its common name (peer-3) as the
user name and the client id (so no one can take over another node's session), refuses
anonymous clients, and lets each node read only its own inbox and write only to its
neighbours' inboxes and its own presence.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from gossipser.errors import TransportError

HOST = "127.0.0.1"
_FALLBACK_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def mosquitto_path() -> str | None:
    """Path of the mosquitto binary, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in _FALLBACK_PATHS if Path(p).is_file()), None)


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Mosquitto:
    """A mosquitto process on 127.0.0.1 with anonymous access and no persistence.

    `port=None` picks a free port once; `stop()` then `start()` reuse it. The config and
    the broker log (``log_path``) live in a temporary folder removed by `close()`.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        start_timeout: float = 5.0,
        max_queued_messages: int = 200,
        keys: Path | str | None = None,
        acl: str | None = None,
    ) -> None:
        binary = mosquitto_path()
        if binary is None:
            raise TransportError("mosquitto not found: apt-get install mosquitto")
        self.binary = binary
        self.host = HOST
        self.port = port if port is not None else free_port()
        self.start_timeout = start_timeout
        self._max_queued = max_queued_messages
        self.keys = Path(keys) if keys is not None else None
        self.acl = acl
        if self.keys is not None and acl is None:
            raise TransportError("mosquitto with TLS needs an ACL (gossipser.net.broker.acl_text)")
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return Path(self._folder(), "mosquitto.log")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the broker (no-op when running); return once its port accepts connections."""
        if self.running:
            return
        config = Path(self._folder(), "mosquitto.conf")
        config.write_text(
            f"listener {self.port} {self.host}\n"
            + (self._tls_lines() if self.keys is not None else "allow_anonymous true\n")
            + "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "set_tcp_nodelay true\n"
            # Bounded queue per offline persistent client: 200 frames of ~200 kB at most.
            f"max_queued_messages {self._max_queued}\n"
            "max_inflight_messages 20\n"
        )
        # The broker logs to stderr, sent to a file: no file permission issue when it drops
        # root privileges to the mosquitto user.
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after `timeout`); keep the port."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def close(self) -> None:
        """Stop the broker and remove its temporary folder."""
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _tls_lines(self) -> str:
        """TLS listener settings; the files are copied beside the config, readable by the
        mosquitto user the broker drops to when started as root."""
        folder = Path(self._folder())
        folder.chmod(0o755)
        for name in ("ca.pem", "broker.pem", "broker.key"):
            try:
                shutil.copyfile(self.keys / name, folder / name)
            except OSError as exc:
                raise TransportError(f"mosquitto: cannot read {self.keys / name}: "
                                     f"{exc.strerror or exc}") from None
            (folder / name).chmod(0o644)
        (folder / "acl").write_text(self.acl)
        (folder / "acl").chmod(0o644)
        return (f"cafile {folder / 'ca.pem'}\ncertfile {folder / 'broker.pem'}\n"
                f"keyfile {folder / 'broker.key'}\nrequire_certificate true\n"
                "use_identity_as_username true\nuse_username_as_clientid true\n"
                f"allow_anonymous false\nacl_file {folder / 'acl'}\n")

    def _folder(self) -> str:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="gossipser-mosquitto-")
        return self._dir.name

    def _wait_ready(self) -> None:
        give_up = time.monotonic() + self.start_timeout
        while time.monotonic() < give_up:
            if self._proc is not None and self._proc.poll() is not None:
                break
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        tail = self._log_tail()
        self.stop()
        raise TransportError(
            f"mosquitto did not accept connections on {self.host}:{self.port} within "
            f"{self.start_timeout:g} s{': ' + tail if tail else ''}"
        )

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""


def acl_text(graph, *, prefix: str, run: str, fedavg: bool = False) -> str:
    """A mosquitto ACL for a run: node N (user peer-N) reads its own inbox, writes only to
    its neighbours' inboxes (the server's, under FedAvg) and owns its presence topic; the
    server (user server) reads its inbox and writes every peer's."""
    root = f"{prefix}/{run}"
    lines = []
    nodes = sorted(graph.nodes)
    for node in nodes:
        targets = [-1] if fedavg else sorted(graph.neighbors(node))
        lines += [f"user peer-{node}", f"topic read {root}/inbox/{node}",
                  *(f"topic write {root}/inbox/{t}" for t in targets),
                  f"topic readwrite {root}/presence/{node}", f"topic read {root}/presence/#",
                  ""]
    lines += ["user server", f"topic read {root}/inbox/-1",
              *(f"topic write {root}/inbox/{t}" for t in nodes),
              f"topic readwrite {root}/presence/-1", f"topic read {root}/presence/#", ""]
    return "\n".join(lines)
