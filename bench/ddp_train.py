"""One DDP training measurement, launched by ``bench.gpu`` through torchrun (1 process, then N):

    torchrun --standalone --nproc_per_node N -m bench.ddp_train RESULT.json [--steps 30] [--tiny]

ViT-L/16 from its config (random init, no download) on synthetic 224×224 batches, bf16 + SDPA,
32 per device, through the transformers Trainer as ``medvit-edge train`` drives it (DDP with
``ddp_find_unused_parameters=False``). A warm-up run first (kernels, NCCL set-up, allocator),
then the measured run; rank 0 writes the global samples/s to RESULT.json. ``--tiny``: a
2-block ViT at 32 px in fp32 on CPUs (gloo), a smoke run of this script where no GPU is.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

VIT_L = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32)


def main() -> None:
    import torch
    from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

    parser = argparse.ArgumentParser()
    parser.add_argument("result", type=Path)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    size = TINY["image_size"] if args.tiny else 224
    on_gpu = torch.cuda.is_available() and not args.tiny

    class Synthetic(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 1_000_000

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"pixel_values": torch.randn(3, size, size), "labels": i % 3}

    config = ViTConfig(**(TINY if args.tiny else VIT_L), num_labels=3, attn_implementation="sdpa")
    with tempfile.TemporaryDirectory() as scratch:
        training = TrainingArguments(
            output_dir=scratch,
            per_device_train_batch_size=args.batch,
            max_steps=args.steps,
            learning_rate=2e-5,
            bf16=on_gpu,
            report_to=[],
            save_strategy="no",
            logging_steps=args.steps,
            dataloader_num_workers=8 if on_gpu else 0,
            dataloader_pin_memory=on_gpu,
            disable_tqdm=True,
            ddp_find_unused_parameters=False,
            use_cpu=not on_gpu,
        )
        trainer = Trainer(model=ViTForImageClassification(config), args=training, train_dataset=Synthetic())
        trainer.train()  # warm-up
        started = time.perf_counter()
        output = trainer.train()
        wall = time.perf_counter() - started
    if training.process_index == 0:
        result = {
            "processes": training.world_size,
            "per_device_batch": args.batch,
            "steps": args.steps,
            "samples_per_second": output.metrics["train_samples_per_second"],
            "wall_s": wall,
            "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
        }
        args.result.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result), flush=True)
    if os.environ.get("WORLD_SIZE", "1") != "1":
        torch.distributed.barrier()


if __name__ == "__main__":
    main()
