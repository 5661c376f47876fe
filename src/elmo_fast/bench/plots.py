"""Throughput-versus-batch-size plot of an `elmo-fast bench` record (needs matplotlib)."""
from __future__ import annotations

import os
from typing import Any, Dict


def plot(rec: Dict[str, Any], path: str) -> str:
    """Writes the PNG; returns a line saying what was done (or why not)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        return f"no plot: matplotlib is not installed ({type(exc).__name__})"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in rec["variants"]:
        rows = sorted((r for r in rec["throughput"] if r["variant"] == v), key=lambda r: r["batch_size"])
        if rows:
            ax.plot([r["batch_size"] for r in rows], [r["tokens_per_s"] for r in rows], marker="o", label=v)
    for k, f in rec["floor_tokens_per_s"].items():
        ax.axhline(f, linestyle="--", linewidth=0.8, color="grey")
        ax.annotate(f"floor {k}", (rec["batch_sizes"][0], f), fontsize=7, va="bottom")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sentences per batch")
    ax.set_ylabel("tokens / s")
    e = rec["environment"]
    ax.set_title(f"ELMo {rec['arch']} on {e.get('gpu') or e['cpu']} ({e['commit'][:8]})", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return f"wrote {path}"
