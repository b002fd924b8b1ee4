"""Train the world model on a Stage 2 tensor cache: three phases (warm-up, main, fine-tune), a checkpoint per
epoch and best_model.pt under --out, metrics.jsonl (and TensorBoard when installed). Under
`torchrun --nproc_per_node=K -m retailsim.train` it trains with DistributedDataParallel."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = __doc__
RUN_DEFAULTS = {"preset": "default", "epochs": 20, "batch_size": 256, "lr": 5e-5, "seed": 0, "grad_accum": 1,
                "val_batches": 0, "promotions": False}
_RESUMED = "; with --resume: the checkpoint's"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path("data/cache"), help="Stage 2 tensor cache folder")
    parser.add_argument("--out", type=Path, default=Path("checkpoints"),
                        help="folder for checkpoint_epoch_N.pt, best_model.pt and metrics.jsonl")
    # The run's settings (RUN_DEFAULTS) default to the checkpoint's under --resume, so they are SUPPRESSed here.
    run_setting = dict(default=argparse.SUPPRESS)
    parser.add_argument("--preset", **run_setting,
                        help="model size: tiny, small or default (~23M parameters) (default: default)" + _RESUMED)
    parser.add_argument("--epochs", type=int, **run_setting,
                        help="epochs; warm-up is the first 15%%, fine-tune the last 25%% (rounded) (default: 20)"
                             + _RESUMED)
    parser.add_argument("--batch-size", type=int, **run_setting,
                        help="baskets per batch (per process under torchrun) (default: 256)" + _RESUMED)
    parser.add_argument("--lr", type=float, **run_setting,
                        help="peak learning rate of the main phase; warm-up and fine-tune use 0.2x (default: 5e-05)"
                             + _RESUMED)
    parser.add_argument("--promotions", action="store_true", **run_setting,
                        help="the model reads the cache's promotion plan: promoted products' catalogue logits get a "
                             "learned lift (off by default: on the demo data it helps promoted items and the "
                             "log-likelihood, not yet HR@10/MRR overall; README)" + _RESUMED)
    parser.add_argument("--resume", type=Path, default=None,
                        help="checkpoint to continue from (checkpoint_epoch_N.pt); continues at epoch N+1 with the "
                             "checkpoint's run settings (giving another value is refused)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run in --out (its checkpoints, best_model.pt, metrics.jsonl); "
                             "without it a folder holding one is refused unless --resume continues it")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (auto: cuda, then mps, then cpu)")
    parser.add_argument("--seed", type=int, **run_setting,
                        help="seed of the weights, shuffling, masks and dropout (default: 0)" + _RESUMED)
    parser.add_argument("--grad-accum", type=int, **run_setting,
                        help="batches accumulated per optimizer step (default: 1)" + _RESUMED)
    parser.add_argument("--max-steps", type=int, default=0,
                        help="stop after this many optimizer steps (0: no limit), for smoke runs; the checkpoint "
                             "then written counts the cut epoch as done")
    parser.add_argument("--patience", type=int, default=5,
                        help="stop after this many epochs without a better validation loss (0: never)")
    parser.add_argument("--val-batches", type=int, **run_setting,
                        help="validation batches per epoch (per process under torchrun), the first in split order "
                             "(0: the whole split) (default: 0)" + _RESUMED)
    parser.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    parser.add_argument("--log-every", type=int, default=50, help="optimizer steps between metrics.jsonl lines")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute activations in backward (less memory, slower)")
    parser.add_argument("--backend", default="auto",
                        help="kernel backend of retailsim.ops: auto, torch, triton or native")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default, one per core)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from retailsim.errors import RetailSimInputError
    from retailsim.ops import set_backend
    from retailsim.train.checkpoint import load_checkpoint
    from retailsim.train.trainer import NonFiniteLossError, TrainConfig, Trainer

    if args.backend not in ("auto", "torch", "triton", "native"):
        raise RetailSimInputError(f"--backend must be one of auto, torch, triton, native, got {args.backend!r}.")
    if args.threads < 0:
        raise RetailSimInputError(f"--threads must be 0 or more, got {args.threads}.")
    set_backend(args.backend)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    state = load_checkpoint(args.resume) if args.resume is not None else None
    saved = (state or {}).get("train_config") or {}
    settings = {name: getattr(args, name, saved.get(name, default)) for name, default in RUN_DEFAULTS.items()}
    config = TrainConfig(data=args.data, out=args.out, device=args.device, max_steps=args.max_steps,
                         patience=args.patience, num_workers=args.num_workers, log_every=args.log_every,
                         gradient_checkpointing=args.gradient_checkpointing, progress=not args.quiet,
                         overwrite=args.overwrite, **settings)
    trainer = Trainer(config, resume=args.resume, resume_state=state)
    try:
        record = trainer.run()
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if trainer.is_main and record:
        validation = (f"validation loss {record['val_loss']:.4f}" if record["val_loss"] is not None else
                      "no validation baskets (best_model.pt follows the training loss)")
        print(f"trained to epoch {record['epoch']} ({record['global_step']} steps): train loss "
              f"{record['train_loss']:.4f}, {validation}, best {record['best_val_loss']:.4f}; "
              f"checkpoints in {config.out}")
    return 0
