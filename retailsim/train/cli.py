"""Train the world model on a Stage 2 tensor cache: three phases (warm-up, main, fine-tune), a checkpoint per
epoch and best_model.pt under --out, metrics.jsonl (and TensorBoard when installed). Under
`torchrun --nproc_per_node=K -m retailsim.train` it trains with DistributedDataParallel."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path("data/cache"), help="Stage 2 tensor cache folder")
    parser.add_argument("--out", type=Path, default=Path("checkpoints"),
                        help="folder for checkpoint_epoch_N.pt, best_model.pt and metrics.jsonl")
    parser.add_argument("--preset", default="default", help="model size: tiny, small or default (~23M parameters)")
    parser.add_argument("--epochs", type=int, default=20,
                        help="epochs; warm-up is the first 15%%, fine-tune the last 25%% (rounded)")
    parser.add_argument("--batch-size", type=int, default=256, help="baskets per batch (per process under torchrun)")
    parser.add_argument("--lr", type=float, default=5e-5,
                        help="peak learning rate of the main phase; warm-up and fine-tune use 0.2x")
    parser.add_argument("--resume", type=Path, default=None,
                        help="checkpoint to continue from (checkpoint_epoch_N.pt); continues at epoch N+1")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (auto: cuda, then mps, then cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, shuffling, masks and dropout")
    parser.add_argument("--grad-accum", type=int, default=1, help="batches accumulated per optimizer step")
    parser.add_argument("--max-steps", type=int, default=0,
                        help="stop after this many optimizer steps (0: no limit), for smoke runs; the checkpoint "
                             "then written counts the cut epoch as done")
    parser.add_argument("--patience", type=int, default=5,
                        help="stop after this many epochs without a better validation loss (0: never)")
    parser.add_argument("--val-batches", type=int, default=0,
                        help="validation batches per epoch (per process under torchrun), the first in split order "
                             "(0: the whole split)")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    parser.add_argument("--log-every", type=int, default=50, help="optimizer steps between metrics.jsonl lines")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute activations in backward (less memory, slower)")
    parser.add_argument("--backend", default="auto",
                        help="kernel backend of retailsim.ops: auto, torch, triton or native")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default); 1 is much faster on a busy shared machine")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from retailsim.errors import RetailSimInputError
    from retailsim.ops import set_backend
    from retailsim.train.trainer import NonFiniteLossError, TrainConfig, Trainer

    if args.backend not in ("auto", "torch", "triton", "native"):
        raise RetailSimInputError(f"--backend must be one of auto, torch, triton, native, got {args.backend!r}.")
    if args.threads < 0:
        raise RetailSimInputError(f"--threads must be 0 or more, got {args.threads}.")
    set_backend(args.backend)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = TrainConfig(data=args.data, out=args.out, preset=args.preset, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, device=args.device, seed=args.seed,
                         grad_accum=args.grad_accum, max_steps=args.max_steps, patience=args.patience,
                         val_batches=args.val_batches,
                         num_workers=args.num_workers, log_every=args.log_every,
                         gradient_checkpointing=args.gradient_checkpointing, progress=not args.quiet)
    trainer = Trainer(config, resume=args.resume)
    try:
        record = trainer.run()
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if trainer.is_main and record:
        print(f"trained to epoch {record['epoch']} ({record['global_step']} steps): train loss "
              f"{record['train_loss']:.4f}, validation loss {record['val_loss']:.4f}, "
              f"best {record['best_val_loss']:.4f}; "
              f"checkpoints in {config.out}")
    return 0
