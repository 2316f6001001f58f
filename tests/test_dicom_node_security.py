"""The DICOM node against a hostile or careless network, on loopback with pynetdicom as the peer:
who may associate, TLS with mutual authentication, idle-connection floods, oversized PDUs and
instances, and the command line's argument checks."""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from medvit_edge.errors import UserError

from .conftest import needs_export
from .dicom_peers import associate, instances, make_ca, send

pytest.importorskip("highdicom")
pytest.importorskip("pynetdicom")

from medvit_edge.hospital.node import DicomNode, NodeConfig


@pytest.fixture()
def node(request: pytest.FixtureRequest, tiny_export: Path, tmp_path: Path) -> Any:
    options = getattr(request, "param", {})
    cfg = NodeConfig(
        model=tiny_export,
        port=0,
        spool=tmp_path / "spool",
        allowed_aes=("US_ROOM_1",),
        dicom_out=tmp_path / "sr",
        **options,
    )
    running = DicomNode(cfg)
    running.start()
    yield running
    running.stop()


@needs_export
def test_only_allowed_calling_aes_reach_the_called_ae_and_c_echo_is_answered(node: DicomNode) -> None:
    assert node.cfg.host == "127.0.0.1"  # nothing else listens by default
    assert not associate(node.port, ae_title="INTRUDER").is_established
    assert not associate(node.port, called="SOMEONE_ELSE").is_established
    association = associate(node.port)
    assert association.is_established
    assert association.send_c_echo().Status == 0x0000
    association.release()


def test_a_node_without_an_allow_list_is_refused_unless_any_ae_is_explicit(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--allow-ae"):
        NodeConfig(model=tmp_path).validate()
    NodeConfig(model=tmp_path, allow_any_ae=True).validate()


@needs_export
@pytest.mark.parametrize(
    "node", [{"max_associations": 2, "max_pending": 4, "acse_timeout": 60.0}], indirect=True
)
def test_idle_connections_never_lock_a_scanner_out(node: DicomNode, phantom_dir: Path) -> None:
    idle = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(12)]
    datasets, _, _ = instances(phantom_dir, 1)
    assert send(node.port, datasets) == [0]  # 12 idle connections, yet the scanner gets through
    idle[0].settimeout(30)
    assert idle[0].recv(1) == b""  # the oldest idle connections were closed to make room
    held = [associate(node.port) for _ in range(2)]
    assert all(a.is_established for a in held)
    assert not associate(node.port).is_established  # max_associations counts real associations
    held[0].release()
    assert send(node.port, datasets) == [0]
    held[1].release()
    for sock in idle:
        sock.close()


@needs_export
@pytest.mark.parametrize("node", [{"max_instance_mb": 1}], indirect=True)
def test_oversized_pdus_and_instances_close_the_connection_and_nothing_is_acknowledged(
    node: DicomNode, phantom_dir: Path
) -> None:
    raw = socket.create_connection(("127.0.0.1", node.port))
    raw.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0))  # an association request "of 4 GB"
    raw.settimeout(30)
    assert raw.recv(1) == b""  # closed at once, nothing allocated
    raw.close()
    big, _, _ = instances(phantom_dir, 1, size=700)  # 1.4 MiB of pixels
    assert send(node.port, big) == [-1]  # no answer: not acknowledged
    small, _, _ = instances(phantom_dir, 1)
    assert send(node.port, small) == [0]
    assert node.stats.received == 1 and not list((node.spool_dir / "incoming").glob("*.dcm"))[1:]


@needs_export
@pytest.mark.parametrize("node", [{"allowed_peers": ("10.1.2.0/24",)}], indirect=True)
def test_a_peer_outside_the_allow_list_is_refused(node: DicomNode) -> None:
    assert not associate(node.port).is_established


@needs_export
def test_tls_with_mutual_authentication(tiny_export: Path, phantom_dir: Path, tmp_path: Path) -> None:
    pem = make_ca(tmp_path)
    cfg = NodeConfig(
        model=tiny_export,
        port=0,
        spool=tmp_path / "spool",
        allowed_aes=("US_ROOM_1",),
        tls_cert=pem["server"],
        tls_key=pem["server-key"],
        tls_ca=pem["ca"],
        acse_timeout=5.0,
    )
    node = DicomNode(cfg)
    node.start()
    try:
        client = ssl.create_default_context(cafile=str(pem["ca"]))
        client.load_cert_chain(pem["client"], pem["client-key"])
        association = associate(node.port, tls=client)
        assert association.is_established
        assert association.send_c_echo().Status == 0x0000
        datasets, _, _ = instances(phantom_dir, 1)
        assert int(association.send_c_store(datasets[0]).Status) == 0
        association.release()
        anonymous = ssl.create_default_context(cafile=str(pem["ca"]))  # no client certificate
        assert not associate(node.port, tls=anonymous).is_established
        assert not associate(node.port).is_established  # no TLS at all
    finally:
        stats = node.stop()
    assert stats.received == 1 and stats.reported == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--port", "70000"], "--port 70000: a TCP port is 0 to 65535"),
        (["--port", "-1"], "--port -1"),
        (["--ae-title", ""], "--ae-title '': an AE title"),
        (["--allow-ae", "A" * 17], "an AE title has 1 to 16"),
        (["--threads", "-1"], "--threads -1: must be at least 1"),
        (["--max-pdu", "0"], "--max-pdu 0"),
        (["--uid-root", "1.2.abc"], "--uid-root '1.2.abc'"),
        (["--allow-peer", "example.org"], "--allow-peer 'example.org'"),
        ([], "--allow-any-ae"),
    ],
)
def test_argument_mistakes_are_one_line_and_exit_2(
    arguments: list[str], message: str, tmp_path: Path
) -> None:
    from medvit_edge.cli import main

    allow = [] if not arguments or "--allow-ae" in arguments else ["--allow-any-ae"]
    result = CliRunner().invoke(main, ["serve-dicom", str(tmp_path), *allow, *arguments])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
