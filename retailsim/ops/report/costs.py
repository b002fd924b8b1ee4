"""What each Triton kernel's launch must move and compute at least, what its grid executes, and how many
times its hot loop runs per program, from the launch's own arguments. Keyed by kernel name; a kernel
without an entry gets a report row with its compile figures and no estimate."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Cost:
    bytes_min: float
    tc_flops_min: float = 0.0      # matrix-product FLOPs the maths needs (tensor cores)
    tc_flops_executed: float = 0.0
    fp32_flops: float = 0.0        # elementwise work on CUDA cores
    exps: float = 0.0
    loop_trips: tuple = (1,)       # trip counts per program of the loop nest, outer to inner
    loop_counts: tuple = ()        # or, where loops sit side by side: (depth, times its body runs per
                                   # program) for each loop of the SASS in address order
    tc_peak: str = "bf16"          # which tensor-core peak applies: bf16 or tf32


def _size(t) -> int:
    return t.element_size()


def _scan(args, backward: bool) -> Cost:
    u, B = args["p_u"], args["p_B"]
    batch, dim, length = u.shape
    dstate = args["dstate"]
    streams = (4 + 3) if backward else (3 + 1)   # bwd: u, delta, z, dout in; du, ddelta, dz out. fwd: 3 in, out
    if not args["HAS_Z"]:
        streams -= 2 if backward else 1
    bc = (2 + (2 if backward else 0)) * batch * dstate * length * _size(B)
    steps = batch * dim * length * dstate
    chunks = math.ceil(length / args["CHUNK"])
    # The backward's chunk loop and the state loop inside it.
    counts = ((1, chunks), (2, chunks * dstate)) if backward else ()
    return Cost(bytes_min=streams * batch * dim * length * _size(u) + bc,
                fp32_flops=steps * (10 if backward else 4), exps=steps,
                loop_trips=(chunks,) + ((dstate,) if backward else ()),
                loop_counts=counts)


def _focal(args, backward: bool = False) -> Cost:
    """The forward reads the logits (and writes the gradient when COMPUTE_GRAD); the backward kernel reads them
    and writes the gradient."""
    logits = args["logits_ptr"]
    rows, n_cols = logits.shape[0], args["n_cols"]
    passes = 2 if backward or args["COMPUTE_GRAD"] else 1
    return Cost(bytes_min=passes * rows * n_cols * _size(logits), fp32_flops=4 * rows * n_cols,
                exps=rows * n_cols, loop_trips=(math.ceil(n_cols / args["BLOCK_V"]),))


def _products(args):
    a, c = args["a_ptr"], args["c_ptr"]
    n, m, d = a.shape[0], c.shape[0], a.shape[1]
    # fp32 operands go through TF32x3: three TF32 products per fp32 product.
    factor, peak = (3, "tf32") if str(a.dtype) == "torch.float32" else (1, "bf16")
    return a, c, n, m, d, factor, peak


def _contrastive_fwd(args, grid) -> Cost:
    a, c, n, m, d, factor, peak = _products(args)
    weighted = bool(args["WANT_WEIGHTED"])
    scores_executed = grid[0] * args["BLOCK_N"] * m * d * 2 * grid[2]
    minimum = 2 * n * m * d * (2 if weighted else 1)
    executed = scores_executed + (2 * n * m * d if weighted else 0)
    return Cost(bytes_min=(n + m) * d * _size(a) + (n * d * 4 if weighted else 0), tc_flops_min=minimum,
                tc_flops_executed=factor * executed, exps=n * m, tc_peak=peak,
                loop_trips=(args["blocks_per_split"], math.ceil(d / args["BLOCK_K"])))


def _contrastive_bwd(args, grid) -> Cost:
    a, c, n, m, d, factor, peak = _products(args)
    executed = grid[0] * args["BLOCK_M"] * n * d * 2 * grid[2] + 2 * n * m * d
    # The candidate gradient (or its fp32 partial per split) once out.
    return Cost(bytes_min=(n + m) * d * _size(a) + m * d * _size(args["grad_ptr"]), tc_flops_min=2 * n * m * d,
                tc_flops_executed=factor * executed, exps=n * m, tc_peak=peak,
                loop_trips=(args["blocks_per_split"], math.ceil(d / args["BLOCK_K"])))


def _contrastive_grad(args, grid) -> Cost:
    """One row per program: the input row and the gradient row; an anchor row also reads its splits' O and its
    positive's candidate row, a candidate row its splits' partial G."""
    a = args["a_ptr"]
    n, m, d = args["N"], args["M"], a.shape[1]
    anchors = args["anchor_rows"]
    candidates = grid[0] - anchors
    work = _size(args["n_valid_ptr"])
    row_bytes = d * (2 * _size(a))
    return Cost(bytes_min=(anchors + candidates) * row_bytes + anchors * d * (args["splits_a"] * work + _size(a))
                + candidates * d * args["splits_c"] * work, fp32_flops=6 * (anchors + candidates) * d)


def cost(name: str, args: dict, grid: tuple) -> Cost | None:
    if name == "_selective_scan_fwd_kernel":
        return _scan(args, backward=False)
    if name == "_selective_scan_bwd_kernel":
        return _scan(args, backward=True)
    if name == "_focal_loss_kernel":
        return _focal(args)
    if name == "_focal_loss_bwd_kernel":
        return _focal(args, backward=True)
    if name == "_focal_reduce_kernel":   # one program: the per-row losses and targets once
        rows = args["n_rows"]
        return Cost(bytes_min=rows * (_size(args["loss_rows_ptr"]) + _size(args["target_ptr"])),
                    loop_trips=(math.ceil(rows / args["BLOCK_R"]),))
    if name == "_contrastive_fwd_kernel":
        return _contrastive_fwd(args, grid)
    if name == "_contrastive_bwd_candidate_kernel":
        return _contrastive_bwd(args, grid)
    if name == "_contrastive_norm_kernel":   # both inputs once, a norm per row out
        a, c = args["a_ptr"], args["c_ptr"]
        rows = a.shape[0] + c.shape[0]
        return Cost(bytes_min=rows * a.shape[1] * _size(a) + rows * _size(args["norm_ptr"]),
                    fp32_flops=2 * rows * a.shape[1], loop_trips=(math.ceil(a.shape[1] / args["BLOCK_K"]),))
    if name == "_contrastive_loss_kernel":   # one program: the splits' (m, l, s_ip) in, row stats out
        n, splits = args["N"], args["n_splits"]
        work = _size(args["row_stats_ptr"])
        blocks = math.ceil(n / args["BLOCK_R"])
        merges = ((2, blocks * splits),) * (2 if args["WANT_SPLIT_WEIGHT"] else 1)   # merge, then weights
        return Cost(bytes_min=(3 * splits + 2) * n * work, exps=n * splits,
                    loop_counts=((1, blocks),) + merges)
    if name == "_contrastive_grad_kernel":
        return _contrastive_grad(args, grid)
    return None
