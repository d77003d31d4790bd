"""What a ranking produces: one RankRow per candidate, the RankResult (rank.json) and the
training settings that start from a ranked candidate."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tlstudio.core.errors import UserError

RANK_JSON = "rank.json"


@dataclass
class RankRow:
    candidate: dict  # Candidate.to_json()
    rank: int | None = None  # 1 = best; None when it could not be scored
    logme: float | None = None
    logme_draws: list[float] | None = None  # LogME on subsets of the images (scoring.DRAWS): its noise
    tie: int | None = None  # rank this row is within noise of (1: tied with the top one)
    probe_acc: float | None = None
    probe_std: float | None = None
    knn_acc: float | None = None
    hscore: float | None = None
    latency_ms: float | None = None
    params: int | None = None
    feature_dim: int | None = None
    input_size: int | None = None
    seconds: float | None = None  # feature extraction + scoring time
    cache_reused: bool = False
    same_as: str | None = None  # label of an earlier candidate with exactly these features (same body)
    error: str = ""
    explanation: str = ""


@dataclass
class RankResult:
    rows: list[RankRow]
    classes: list[str]
    n_images: int
    data_dir: str
    out_dir: str
    summary: str
    seconds: float
    status: str = "finished"  # or "stopped"
    extra: dict[str, Any] = field(default_factory=dict)

    def ranked(self) -> list[RankRow]:
        return [r for r in self.rows if r.rank is not None]

    def top(self) -> RankRow | None:
        r = self.ranked()
        return r[0] if r else None

    def to_json(self) -> dict:
        return {"schema_version": 1, "status": self.status, "data_dir": self.data_dir, "classes": self.classes,
                "n_images": self.n_images, "summary": self.summary, "seconds": self.seconds,
                "rows": [asdict(r) for r in self.rows], **self.extra}

    @classmethod
    def from_json(cls, d: dict, out_dir: str = "") -> RankResult:
        rows = [RankRow(**r) for r in d.get("rows", [])]
        return cls(rows=rows, classes=list(d.get("classes", [])), n_images=int(d.get("n_images", 0)),
                   data_dir=str(d.get("data_dir", "")), out_dir=out_dir, summary=str(d.get("summary", "")),
                   seconds=float(d.get("seconds", 0.0)), status=str(d.get("status", "finished")))


def read_rank(run_dir: str | Path) -> RankResult:
    import json

    path = Path(run_dir) / RANK_JSON
    try:
        return RankResult.from_json(json.loads(path.read_text(encoding="utf-8")), out_dir=str(run_dir))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: cannot read the ranking ({exc})") from exc


def train_settings(row: RankRow | dict) -> dict:
    """TrainConfig fields that start a training from a ranked candidate, at the input size it was
    scored at (so a head-only run with no augmentation reuses the cached features)."""
    r = row if isinstance(row, dict) else asdict(row)
    c = r["candidate"]
    out = {"backbone": c["backbone"], "init": c["init"], "weights_file": c.get("weights_file"),
           "init_run": c.get("init_run")}
    if r.get("input_size"):
        out["image_size"] = int(r["input_size"])
    return out
