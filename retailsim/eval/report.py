"""The evaluation report: the SPEC 5 JSON (written atomically), a Markdown table next to it and PNG plots.

For ``--output results/test_results.json``: ``results/test_results.md`` (model, baselines and oracle side by side,
then the buckets), ``results/test_results_metrics.png`` (bar chart by model/baseline/oracle),
``results/test_results_buckets.png`` (HR@10 and MRR of model and blend by bucket) and, given a JSONL metrics log,
``results/test_results_training.png`` (every numeric series of the log against its step).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

TABLE_METRICS = ("accuracy", "hr@1", "hr@5", "hr@10", "hr@20", "recall@10", "ndcg@10", "mrr", "loglik",
                 "acc_basket_size", "acc_price_band", "acc_basket_type", "acc_mission")
PLOT_METRICS = ("hr@1", "hr@5", "hr@10", "hr@20", "recall@10", "ndcg@10", "mrr")


def write_atomic(path: Path, text: str | bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        temporary.write_bytes(text.encode() if isinstance(text, str) else text)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def _columns(results: dict) -> dict[str, dict]:
    columns = {}
    if results.get("metrics"):
        columns["model"] = results["metrics"]
    columns.update(results["baselines"])
    if results.get("oracle"):
        columns["oracle"] = results["oracle"]
    return columns


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_table(results: dict) -> str:
    columns = _columns(results)
    lines = [f"Evaluation of {results.get('checkpoint') or 'baselines only'} on {results['split']}: "
             f"{results['n_tokens']} masked tokens ({results.get('n_unk_targets', 0)} UNK targets left out)", "",
             "| metric | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name in TABLE_METRICS:
        lines.append(f"| {name} | " + " | ".join(_cell(c.get(name)) for c in columns.values()) + " |")
    weights = results["baselines"]["blend"].get("weights")
    if weights:
        lines += ["", "Blend weights (tuned on validation, max MRR): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in weights.items())
                  + (" - tuned on this very split, so the blend's numbers here are optimistic."
                     if results["split"] == "validation" else ".")]
    oracle = results.get("oracle")
    if oracle:
        lines += ["", f"Oracle: the generator's own rank (basket's other items excluded, slightly optimistic); "
                      f"coverage {oracle['coverage']:.3f} of the tokens."]
    promotion = results["baselines"].get("promotion_blend")
    if promotion:
        lines += ["", f"Promotion-aware blend: {1 - promotion['promotion_weight']:g} blend + "
                      f"{promotion['promotion_weight']:g} popularity over the week's promoted products (the weight "
                      f"tuned on validation, max MRR)."]
    scorers = ["model", "blend"] + (["promotion_blend"] if promotion else [])
    header = " | ".join(f"{scorer} {metric}" for metric in ("hr@10", "mrr") for scorer in scorers)
    lines += ["", f"| bucket | tokens | {header} |", "|---|---:|" + "---:|" * (2 * len(scorers))]
    for name, bucket in results["buckets"].items():
        cells = " | ".join(_cell((bucket.get(scorer) or {}).get(metric)) for metric in ("hr@10", "mrr")
                           for scorer in scorers)
        lines.append(f"| {name} | {bucket['n_tokens']} | {cells} |")
    return "\n".join(lines) + "\n"


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(results: dict, path: Path) -> None:
    plt = _figure()
    columns = _columns(results)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(columns))
    for i, (name, values) in enumerate(columns.items()):
        heights = [values.get(m) or 0.0 for m in PLOT_METRICS]
        ax.bar([x + i * width for x in range(len(PLOT_METRICS))], heights, width, label=name)
    ax.set_xticks([x + width * (len(columns) - 1) / 2 for x in range(len(PLOT_METRICS))], PLOT_METRICS)
    ax.set_ylabel("token-weighted mean")
    ax.set_title(f"{results['split']}: model, baselines and oracle")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_buckets(results: dict, path: Path) -> None:
    plt = _figure()
    names = list(results["buckets"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("hr@10", "mrr")):
        for i, scorer in enumerate(("model", "blend")):
            heights = [(results["buckets"][b].get(scorer) or {}).get(metric) or 0.0 for b in names]
            ax.bar([x + i * 0.4 for x in range(len(names))], heights, 0.4, label=scorer)
        ax.set_xticks([x + 0.2 for x in range(len(names))], names, rotation=30)
        ax.set_title(f"{metric} by bucket")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _panel(key: str) -> str | None:
    if key == "seconds" or key.startswith("best_"):
        return None
    if key.endswith("loss"):
        return "loss"
    if key in ("lr", "samples_per_s", "grad_norm"):
        return {"lr": "learning rate", "samples_per_s": "samples/s", "grad_norm": "gradient norm"}[key]
    return "loss terms"


def plot_training(metrics_log: Path, path: Path) -> bool:
    """The trainer's JSONL log against ``global_step`` (else ``step``, else the line number): total losses, loss
    terms, learning rate, samples/s and gradient norm, one panel each (those present)."""
    records = [json.loads(line) for line in Path(metrics_log).read_text().splitlines() if line.strip()]
    panels: dict[str, dict[str, tuple[list, list]]] = {}
    for index, record in enumerate(records):
        x = record.get("global_step", record.get("step", index))
        for key, value in record.items():
            if key in ("global_step", "step", "epoch") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            panel = _panel(key)
            if panel is None or not math.isfinite(value):
                continue
            xs, ys = panels.setdefault(panel, {}).setdefault(key, ([], []))
            xs.append(x)
            ys.append(value)
    if not panels:
        return False
    plt = _figure()
    order = [p for p in ("loss", "loss terms", "learning rate", "samples/s", "gradient norm") if p in panels]
    columns = min(3, len(order))
    rows = math.ceil(len(order) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, order):
        for key, (xs, ys) in panels[panel].items():
            ax.plot(xs, ys, label=key, marker="." if len(xs) < 30 else None)
        ax.set_title(panel)
        ax.set_xlabel("optimizer step")
        if panel == "learning rate":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(order):]:
        ax.axis("off")
    fig.suptitle("training curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def report_paths(output: Path) -> dict[str, Path]:
    """Every file ``write_report(results, output, ...)`` may write, by kind."""
    output = Path(output)
    return {"json": output, "markdown": output.with_suffix(".md"),
            "metrics_png": output.with_name(f"{output.stem}_metrics.png"),
            "buckets_png": output.with_name(f"{output.stem}_buckets.png"),
            "training_png": output.with_name(f"{output.stem}_training.png")}


def write_report(results: dict, output: Path, metrics_log: Path | None = None) -> dict[str, Path]:
    """Writes the JSON, the Markdown table and the plots; returns their paths by kind."""
    output = Path(output)
    paths = report_paths(output)
    training = paths.pop("training_png")
    write_atomic(paths["json"], json.dumps(results, indent=2))
    write_atomic(paths["markdown"], markdown_table(results))
    plot_metrics(results, paths["metrics_png"])
    plot_buckets(results, paths["buckets_png"])
    if metrics_log is not None:
        if plot_training(metrics_log, training):
            paths["training_png"] = training
    return paths
