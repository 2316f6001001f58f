"""What ``torchrun`` runs in tests/test_distributed_train.py: the ``medvit-edge`` command line
(``python -m medvit_edge.cli ...``), plus a record per rank, written to
``$MEDVIT_TEST_RECORD/rank<N>.json``: a hash of the model's weights after every optimizer step
and at the end, and the digest of the split this rank computed. The production code stays free
of test hooks: this wrapper adds a Trainer callback from outside.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any


def state_hash(model: Any) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main() -> int:
    from transformers import TrainerCallback

    import medvit_edge.train.run as run
    from medvit_edge.cli import main as cli

    record: dict[str, Any] = {"steps": {}, "split": None, "final": None}

    class RecordWeights(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            record["steps"][state.global_step] = state_hash(model)

    trainers: list[Any] = []
    build_trainer, check_same_split = run.build_trainer, run.check_same_split

    def recording_build_trainer(*args: Any, **kwargs: Any) -> Any:
        trainer = build_trainer(*args, **kwargs)
        trainer.add_callback(RecordWeights())
        trainers.append(trainer)
        return trainer

    def recording_check(bundle: Any) -> str:
        record["split"] = check_same_split(bundle)
        return record["split"]

    run.build_trainer, run.check_same_split = recording_build_trainer, recording_check
    try:
        cli(sys.argv[1:], prog_name="medvit-edge")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    if trainers:
        record["final"] = state_hash(trainers[0].model)
    record["code"] = code
    rank = os.environ["RANK"]
    (Path(os.environ["MEDVIT_TEST_RECORD"]) / f"rank{rank}.json").write_text(json.dumps(record))
    return code


if __name__ == "__main__":
    sys.exit(main())
