"""Rebuild a run's trained model from its run folder (best or last weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from tlstudio.core.runs.folder import BEST_WEIGHTS, LAST_CKPT, RunError, read_run


def load_run_model(run_dir: str | Path, which: Literal["best", "last"] = "best"):
    """Rebuild the run's model with its trained weights, in eval mode. Returns (model, RunInfo)."""
    from tlstudio.core.models.backbones import create_model
    from tlstudio.core.models.weights import load_state_dict_file

    from tlstudio.core.runs.guard import check_weights_match

    info = read_run(run_dir)
    if which == "best":
        check_weights_match(run_dir)  # weights and run.json from different runs: one line, not a shape error
    model = create_model(info.model.backbone, info.model.num_classes, init="scratch")
    if which == "last":
        ckpt_path = Path(run_dir) / LAST_CKPT
        import torch

        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise RunError(f"{ckpt_path}: cannot read checkpoint: {exc}") from exc
        state = ckpt["model"]
    else:
        path = Path(run_dir) / BEST_WEIGHTS
        if not path.is_file():
            raise RunError(f"{run_dir}: the run has no trained weights yet ({BEST_WEIGHTS} missing)")
        state = load_state_dict_file(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensor shapes differ (a head for another number of classes ...)
        first = str(exc).strip().splitlines()
        raise RunError(f"{run_dir}: weights do not fit {info.model.backbone} as run.json describes it: "
                       f"{(first[1] if len(first) > 1 else first[0]).strip()[:200]}") from None
    if missing or unexpected:
        raise RunError(
            f"{run_dir}: weights do not fit {info.model.backbone}: "
            f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    model.eval()
    return model, info
