"""`serve-dicom`: the DICOM node's command line (settings in medvit_edge.hospital.node_config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from medvit_edge.cli.common import config_default, new_path_option, require
from medvit_edge.hospital.node_config import NodeConfig
from medvit_edge.options import choices, field_default
from medvit_edge.runtime.variants import Device

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_LIMITS = (
    ("--acse-timeout", "acse_timeout", float, "Seconds to wait for an association request (and TLS)."),
    ("--dimse-timeout", "dimse_timeout", float, "Seconds to wait for a DIMSE message."),
    ("--network-timeout", "network_timeout", float, "Seconds an idle association stays open."),
    ("--max-pdu", "max_pdu", int, "Largest PDU accepted (bytes); a longer one closes the connection."),
    ("--max-associations", "max_associations", int, "Associations at once; more are rejected."),
    ("--max-pending", "max_pending", int, "Connections without an association request kept at once."),
    ("--max-instance-mb", "max_instance_mb", int, "Largest instance accepted (MiB)."),
    ("--spool-quota-mb", "spool_quota_mb", int, "A spool this full refuses new instances (0xA700)."),
    ("--resend-interval", "resend_interval", float, "Seconds between re-sends of unsent SRs."),
    ("--queue-size", "queue_size", int, "Instances waiting at most; then a sender is refused (0xA700)."),
)


def _options(command: Any) -> Any:
    for flag, name, kind, text in reversed(_LIMITS):
        command = config_default(flag, NodeConfig, name, kind, text)(command)
    return command


@click.command("serve-dicom")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--ae-title", default=field_default(NodeConfig, "ae_title"), show_default=True, help="This AE.")
@click.option("--port", type=int, default=field_default(NodeConfig, "port"), show_default=True)
@click.option(
    "--host",
    default=field_default(NodeConfig, "host"),
    show_default=True,
    help="Listen address (0.0.0.0: every interface).",
)
@click.option("--destination", help="Send each SR to this AE: AE@host:port (e.g. PACS@10.0.0.5:104).")
@new_path_option("--dicom-out", "Also keep each SR here.", folder=True)
@new_path_option("--audit-log", "One JSON line per prediction.", folder=False)
@new_path_option(
    "--spool",
    "Durable spool (received instances, unsent SRs, failed/). "
    "[default: $XDG_STATE_HOME/medvit-edge/spool/AE_TITLE]",
    True,
)
@click.option(
    "--modality",
    "modalities",
    multiple=True,
    default=field_default(NodeConfig, "modalities"),
    show_default=True,
    help="Classify instances of this Modality (repeatable); others are parked in failed/.",
)
@click.option("--allow-ae", "allowed_aes", multiple=True, help="Accept only these calling AE titles.")
@click.option("--allow-any-ae", is_flag=True, help="Accept any calling AE title (needed without --allow-ae).")
@click.option("--allow-peer", "allowed_peers", multiple=True, help="Accept only this address or network.")
@click.option("--tls-cert", type=_FILE, help="TLS certificate (PEM) of this node.")
@click.option("--tls-key", type=_FILE, help="Its private key (PEM).")
@click.option("--tls-ca", type=_FILE, help="CA (PEM) that peers' certificates must be signed by.")
@click.option("--uid-root", help="Your organisation's UID root for the SRs' UIDs.")
@_options
@click.option(
    "--device",
    type=click.Choice(choices(Device)),
    default=field_default(NodeConfig, "device"),
    show_default=True,
)
@click.option("--threads", type=int, help="onnxruntime intra-op threads. [default: all cores]")
def serve_dicom(**values: Any) -> None:
    """A DICOM node: a Storage SCP that classifies each ultrasound instance it receives and sends
    a DICOM Structured Report to --destination (C-STORE). Every acknowledged instance ends as an
    SR or in SPOOL/failed/; SIGTERM or SIGINT stop it after the instances received are done.
    Listens on 127.0.0.1 unless --host; needs --allow-ae (or --allow-any-ae). Needs [dicom].
    """
    for key in ("modalities", "allowed_aes", "allowed_peers"):
        values[key] = tuple(values[key])
    cfg = NodeConfig(**values)
    cfg.validate()  # argument mistakes before the model loads
    require("runtime")
    from medvit_edge.hospital.node import serve

    stats = serve(cfg)
    click.echo(
        f"{stats.received} instances received, {stats.reported} reported, {stats.failed} failed, "
        f"{stats.refused} refused; {stats.sent} SRs sent, {stats.unsent} not sent"
    )
