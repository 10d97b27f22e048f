"""``rine``: RINE (Koutlis & Papadopoulos, ECCV 2024) over the class tokens of every chosen
transformer block (recipe ``clip_layers``), trained as its official code does (last epoch)."""

from __future__ import annotations

from nsnet.heads.baselines import RINE, SETTINGS
from nsnet.heads.head_training import paper_schedule
from nsnet.heads.method import Method, register


def blocks_and_width(fs) -> tuple[int, dict[str, int]]:
    """RINE's rows are (blocks, width) class tokens: its width and number of blocks."""
    row = list(fs.provenance.get("row_shape") or [fs.dim])
    if len(row) != 2:
        raise ValueError("the rine head reads (blocks, width) class tokens (recipe "
                         f"clip_layers); these features have rows of shape {row}")
    return row[1], {"n_layers": row[0]}


register(Method("rine", RINE, recipe="clip_layers", published="rine", shape=blocks_and_width,
                schedule=lambda tp: paper_schedule(SETTINGS["rine"]),
                title="RINE: intermediate CLIP blocks weighted by a trainable importance "
                      "estimator"))
