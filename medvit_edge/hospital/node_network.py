"""The DICOM node's network side: who may connect, TLS, and the limits that keep a hostile or
broken peer from exhausting the node.

* **Peers**: an optional allow-list of addresses or networks (``--allow-peer 10.0.0.0/24``);
  any other peer's connection is closed before a byte is read.
* **TLS** (``--tls-cert/--tls-key``, and ``--tls-ca`` for mutual authentication: a peer
  without a certificate signed by that CA is refused). The handshake runs in the connection's
  own thread under the ACSE timeout, so a peer that connects and says nothing cannot stall the
  listener.
* **Idle connections** (connected, no A-ASSOCIATE-RQ yet) never count against
  ``max_associations``: at most ``max_pending`` of them are kept, the oldest is closed to make
  room for a new one, and each is closed after the ACSE timeout. A flood of idle TCP
  connections therefore cannot lock a scanner out.
* **Sizes**: a PDU longer than the maximum PDU the node announced, or an instance longer than
  ``max_instance_bytes``, closes the connection (the instance was not acknowledged), so memory
  stays bounded by ``max_associations`` x ``max_instance_bytes``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvit_edge.errors import UserError

logger = logging.getLogger(__name__)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def check_ae_title(option: str, value: str) -> str:
    """An AE title: 1-16 characters of printable ASCII, not only spaces, no backslash."""
    text = value.strip()
    if not text or len(value) > 16 or not all(" " <= c <= "~" and c != "\\" for c in value):
        raise UserError(
            f"{option} {value!r}: an AE title has 1 to 16 printable ASCII characters "
            "(no backslash, not only spaces)"
        )
    return text


def parse_peers(values: tuple[str, ...]) -> tuple[Network, ...]:
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError as exc:
            raise UserError(f"--allow-peer {value!r}: not an IP address or network ({exc})") from exc
    return tuple(networks)


def peer_allowed(address: str, networks: tuple[Network, ...]) -> bool:
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


def server_tls(cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext | None:
    """TLS 1.2+ server context; with ``ca``, peers must present a certificate it signed."""
    if cert is None and key is None and ca is None:
        return None
    if cert is None or key is None:
        raise UserError("--tls-cert and --tls-key go together (and --tls-ca needs both)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
        if ca is not None:
            context.load_verify_locations(cafile=ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"--tls-cert {cert} / --tls-key {key} / --tls-ca {ca}: {exc}") from exc
    return context


def client_tls(cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext | None:
    """For the SR sender, with the node's TLS options: verifies the PACS against ``ca`` and
    presents the node's certificate."""
    if ca is None:
        return None
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # a PACS is named by address; the CA pins who it may be
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    return context


@dataclass(frozen=True)
class Limits:
    acse_timeout: float  # waiting for A-ASSOCIATE-RQ (and the TLS handshake), and for replies
    dimse_timeout: float
    network_timeout: float  # an established association idle this long is closed
    max_pdu: int
    max_associations: int
    max_pending: int
    max_instance_bytes: int


def make_ae(ae_title: str, limits: Limits) -> Any:
    """An AE whose association limit counts established associations only."""
    from pynetdicom import AE

    class _NodeAE(AE):  # type: ignore[misc]
        @property  # type: ignore[override]
        def maximum_associations(self) -> int:
            # pynetdicom rejects when all acceptor threads (idle ones included) > this value;
            # adding the not-yet-established ones makes it "established + this one > limit"
            current = threading.current_thread()
            others = [
                a
                for a in self.active_associations
                if a.is_acceptor and not a.is_established and a is not current
            ]
            return limits.max_associations + len(others)

        @maximum_associations.setter
        def maximum_associations(self, value: int) -> None:
            pass

    ae = _NodeAE(ae_title=ae_title)
    ae.acse_timeout, ae.dimse_timeout = limits.acse_timeout, limits.dimse_timeout
    ae.network_timeout, ae.maximum_pdu_size = limits.network_timeout, limits.max_pdu
    ae.require_called_aet = True
    return ae


def start_server(
    ae: Any,
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    peers: tuple[Network, ...],
    limits: Limits,
    handlers: list[Any],
) -> Any:
    """Listen in a daemon thread; returns the server (``shutdown()`` stops it)."""
    from pynetdicom import evt

    def _requested(event: Any) -> None:
        sock = event.assoc.dul.socket
        server.settled(sock.socket if sock is not None else None)
        if sock is not None and sock.socket is not None:
            # a peer that stops in the middle of a PDU must not hold the association forever
            sock.socket.settimeout(limits.network_timeout)

    def _reset(event: Any) -> None:
        sock = event.assoc.dul.socket
        if sock is not None:
            sock.received = 0

    bound = [*handlers, (evt.EVT_REQUESTED, _requested), (evt.EVT_DIMSE_RECV, _reset)]
    bound += [(evt.EVT_CONN_CLOSE, lambda e: server.settled(getattr(e.assoc.dul.socket, "socket", None)))]
    server_class = _server_class(limits, peers, tls)
    server = ae.make_server((host, port), evt_handlers=bound, server_class=server_class)
    thread = threading.Thread(target=server.serve_forever, name="node-listener", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server


def _guarded_socket(limits: Limits) -> type:
    from pynetdicom.transport import AssociationSocket

    class _Socket(AssociationSocket):  # type: ignore[misc]
        """Closes the connection on an over-long PDU or instance."""

        received = 0

        def recv(self, nr_bytes: int) -> bytearray:
            self.received += nr_bytes
            if nr_bytes > limits.max_pdu + 16 or self.received > limits.max_instance_bytes + 65536:
                logger.warning(
                    "closing the connection from %s: more than %s bytes in one %s",
                    self.assoc.requestor.address,
                    limits.max_pdu if nr_bytes > limits.max_pdu + 16 else limits.max_instance_bytes,
                    "PDU" if nr_bytes > limits.max_pdu + 16 else "instance",
                )
                self.close()
                raise OSError("limit exceeded")
            return super().recv(nr_bytes)  # type: ignore[no-any-return]

    return _Socket


def _server_class(limits: Limits, peers: tuple[Network, ...], tls: ssl.SSLContext | None) -> type:
    """A threaded association server that checks peers, defers the TLS handshake to the
    connection's thread and keeps at most ``max_pending`` idle connections."""
    from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

    guarded = _guarded_socket(limits)

    class _Handler(RequestHandler):  # type: ignore[misc]
        def _create_association(self) -> Any:
            assoc = super()._create_association()
            assoc.dul.socket.__class__ = guarded  # same object: its events are already queued
            assoc.dul.socket.socket.settimeout(limits.acse_timeout)
            return assoc

    class _Server(ThreadedAssociationServer):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.pending: OrderedDict[int, socket.socket] = OrderedDict()
            self.pending_lock = threading.Lock()
            super().__init__(*args, request_handler=_Handler, **kwargs)

        def get_request(self) -> tuple[socket.socket, Any]:
            client, address = self.socket.accept()
            if not peer_allowed(str(address[0]), peers):
                logger.warning("connection from %s refused: not in --allow-peer", address[0])
                client.close()
                raise OSError("peer not allowed")  # socketserver drops the request
            if tls is not None:
                client = tls.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
            self._track(client)
            return client, address

        def _track(self, client: socket.socket) -> None:
            with self.pending_lock:
                while len(self.pending) >= limits.max_pending:
                    _, oldest = self.pending.popitem(last=False)
                    logger.warning("closing an idle connection (no association request)")
                    _close(oldest)
                self.pending[id(client)] = client

        def settled(self, client: Any) -> None:
            with self.pending_lock:
                self.pending.pop(id(client), None)

        def close_pending(self) -> None:
            """At shutdown: connections that never asked for an association wait for nothing."""
            with self.pending_lock:
                for client in self.pending.values():
                    _close(client)
                self.pending.clear()

    return _Server


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
