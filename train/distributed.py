"""Several processes, one run: what a DDP launch (``torchrun``, ``accelerate launch``) needs
beyond what the transformers Trainer does itself.

The Trainer shards the data, wraps the model in DistributedDataParallel and saves checkpoints
from rank 0. Around it, ``train()`` must make sure that every rank trains on the same split,
that one process (global rank 0) writes the run folder, that the others wait for it where they
read what it wrote, and that the batch a step really sees is reported. With one process every
function here is a no-op or returns the single-process answer.

The process group exists once ``TrainingArguments`` has set up its devices (it reads
``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` from the launcher): ``train()`` builds the arguments
first, then uses these helpers.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from typing import Any, TypeVar

from medvit_edge.errors import UserError

from .data import DataBundle

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _group() -> Any:
    """``torch.distributed`` when a process group is up, else None (one process)."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def barrier() -> None:
    """Wait until every rank gets here. If one rank dies first, the launcher (torchrun, which
    ``accelerate launch`` runs too) stops the others, so nobody waits forever."""
    dist = _group()
    if dist is not None:
        dist.barrier()


def from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (each rank computing it could see different files)."""
    dist = _group()
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def split_digest(bundle: DataBundle) -> str:
    """A fingerprint of the split: labels, then each sample's key, label, split and group."""
    digest = hashlib.sha256("\x1f".join(bundle.labels).encode("utf-8", "surrogateescape"))
    for sample in bundle.samples:
        row = "\x1f".join((sample.key, sample.label, sample.split, sample.group))
        digest.update(b"\x1e" + row.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def check_same_split(bundle: DataBundle) -> str:
    """Every rank computes the split itself (seeded and ordered, so it must come out the same);
    this proves it did before any rank trains, rather than trusting it. Returns the digest."""
    digest = split_digest(bundle)
    dist = _group()
    if dist is None:
        return digest
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        differing = [rank for rank, other in enumerate(digests) if other != digests[0]]
        raise UserError(
            f"the data split differs between processes (ranks {differing} disagree with rank 0): "
            "do all nodes see the same files under the same paths?"
        )
    return digest


def effective_batch(args: Any) -> dict[str, Any]:
    """What one optimizer step sees: per-device batch × processes × accumulation steps. The
    learning rate is used as given, not scaled with the batch (scale it yourself if you want)."""
    per_device = int(args.per_device_train_batch_size)
    processes = int(args.world_size)
    accumulation = int(args.gradient_accumulation_steps)
    return {
        "per_device_batch_size": per_device,
        "processes": processes,
        "gradient_accumulation_steps": accumulation,
        "effective_batch_size": per_device * processes * accumulation,
        "learning_rate": float(args.learning_rate),
    }


def describe_batch(batch: dict[str, Any], source: str = "as given") -> str:
    """``source``: where the learning rate came from ("as given", "from-scratch recipe")."""
    return (
        f"batch {batch['per_device_batch_size']} per device × {batch['processes']} "
        f"process{'es' if batch['processes'] != 1 else ''} × {batch['gradient_accumulation_steps']} "
        f"accumulation = {batch['effective_batch_size']} per optimizer step; "
        f"learning rate {batch['learning_rate']:g} ({source}, not scaled with the batch)"
    )


@contextlib.contextmanager
def quiet_replicas(is_main: bool) -> Iterator[None]:
    """On ranks other than 0, medvit-edge logs warnings only: N copies of every info line help
    nobody. (The Trainer does the same for its own logs: ``log_level_replica``.)"""
    package = logging.getLogger("medvit_edge")
    level = package.level
    if not is_main:
        package.setLevel(logging.WARNING)
    try:
        yield
    finally:
        package.setLevel(level)
