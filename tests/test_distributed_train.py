"""Distributed training as it is launched in practice: ``torchrun`` with 2 processes on CPU (gloo),
the tiny preset on phantom images, a few steps; then ``--resume`` of the same run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, needs_torch
from .test_train import RUN_OUTPUTS

pytestmark = [needs_torch, pytest.mark.slow]

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.fixture(scope="module")
def small_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medvit_edge.io.phantom import generate_phantom_dataset

    root = tmp_path_factory.mktemp("ddp_phantoms")
    return generate_phantom_dataset(root, train_per_class=12, test_per_class=4, seed=5)


def torchrun(record: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py train ...`` (a free port is
    picked by the rendezvous), one thread per process on this 2-core machine."""
    record.mkdir(exist_ok=True)
    for old in record.glob("rank*.json"):
        old.unlink()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "MEDVIT_TEST_RECORD": str(record), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*command, str(WORKER), "train", *arguments],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def ranks(record: Path) -> list[dict]:
    return [json.loads((record / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def train_arguments(data: Path, run_dir: Path, max_steps: int) -> list[str]:
    return [
        "--model", "tiny", "--recipe", "from-scratch", "--data", str(data), "--output", str(run_dir),
        "--batch-size", "8", "--eval-batch-size", "16", "--workers", "0", "--seed", "3",
        "--epochs", "10", "--max-steps", str(max_steps),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def ddp_run(small_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    base = tmp_path_factory.mktemp("ddp")
    run_dir, record = base / "run", base / "record"
    result = torchrun(record, *train_arguments(small_phantoms, run_dir, max_steps=3))
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir, record, result


def test_two_processes_write_one_complete_run_folder(ddp_run: tuple) -> None:
    run_dir, _, result = ddp_run
    for name in RUN_OUTPUTS:
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    assert not list(run_dir.glob(".*.tmp")), "a temporary file was left behind"
    # the command's result and each evaluation's line come from one process only
    assert result.stdout.count("run folder:") == 1, result.stdout
    evaluations = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(evaluations) == 2, result.stderr[-3000:]  # epoch 1 (2 steps), and the stop at step 3
    assert metrics["steps"] == 3
    # the whole test split was measured: the ranks' shards gathered, nothing counted twice
    with open(run_dir / "split.csv", newline="") as handle:
        test_rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    assert metrics["test"]["n"] == len(test_rows) == 12
    assert metrics["batch"] == {
        "per_device_batch_size": 8,
        "processes": 2,
        "gradient_accumulation_steps": 1,
        "effective_batch_size": 16,
        "learning_rate": 1e-3,
    }
    assert "batch 8 per device × 2 processes × 1 accumulation = 16" in result.stderr
    assert "batch 16 (8 per device × 2 processes" in (run_dir / "README.md").read_text()


def test_every_rank_trains_the_same_weights_on_the_same_split(ddp_run: tuple) -> None:
    _, record, _ = ddp_run
    first, second = ranks(record)
    assert first["code"] == second["code"] == 0
    assert first["split"] == second["split"] is not None
    assert sorted(first["steps"], key=int) == ["1", "2", "3"]
    assert first["steps"] == second["steps"]  # DDP kept the replicas equal after every step
    assert len(set(first["steps"].values())) == 3  # ...and the weights did change
    assert first["final"] == second["final"]


def test_saved_model_is_what_the_ranks_hold(ddp_run: tuple) -> None:
    import torch
    from safetensors.torch import load_file

    from .ddp_worker import state_hash

    run_dir, record, _ = ddp_run
    saved = load_file(str(run_dir / "model.safetensors"))
    model = torch.nn.Module()
    model.state_dict = lambda: saved  # type: ignore[method-assign]
    assert state_hash(model) == ranks(record)[0]["final"]


def test_distributed_run_resumes(ddp_run: tuple, small_phantoms: Path) -> None:
    run_dir, record, _ = ddp_run
    split_before = (run_dir / "split.csv").read_bytes()
    result = torchrun(record, *train_arguments(small_phantoms, run_dir, max_steps=5), "--resume")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "resuming from" in result.stderr and "checkpoint-3" in result.stderr
    first, second = ranks(record)
    assert sorted(first["steps"], key=int) == ["4", "5"]  # continued after step 3, not from 0
    assert first["steps"] == second["steps"] and first["final"] == second["final"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 5
    assert (run_dir / "split.csv").read_bytes() == split_before
    assert result.stdout.count("run folder:") == 1


SPLIT_PROBE = """
import sys
from medvit_edge.train.config import TrainConfig
from medvit_edge.train.distributed import split_digest
from medvit_edge.train.prepare import prepare_data
print(split_digest(prepare_data(TrainConfig(data=sys.argv[1], seed=11))))
"""


def test_split_is_the_same_in_every_process(small_phantoms: Path) -> None:
    """Each rank computes the split itself: string hashing (a new seed per process), thread
    pools and dict order must not change it. A class folder: the whole split is computed."""
    folder = small_phantoms.parent / "train"
    digests = set()
    for hash_seed in ("1", "2", "random"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        probe = subprocess.run(
            [sys.executable, "-c", SPLIT_PROBE, str(folder)], env=env, capture_output=True, text=True
        )
        assert probe.returncode == 0, probe.stderr
        digests.add(probe.stdout.strip())
    assert len(digests) == 1


def test_ranks_that_see_different_data_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that lists other files (another mount, a missing image) must not train on its own
    split: the digest exchange before training names the ranks that disagree."""
    from medvit_edge.errors import UserError
    from medvit_edge.train import distributed
    from medvit_edge.train.data import DataBundle, Sample

    class TwoRanks:
        def get_world_size(self) -> int:
            return 2

        def all_gather_object(self, gathered: list, value: str) -> None:
            gathered[:] = [value, "a digest of another split"]

    monkeypatch.setattr(distributed, "_group", lambda: TwoRanks())
    bundle = DataBundle([Sample("a.png", "benign", "train")], ["benign", "malignant"], "data.csv")
    with pytest.raises(UserError, match=r"differs between processes \(ranks \[1\]"):
        distributed.check_same_split(bundle)
