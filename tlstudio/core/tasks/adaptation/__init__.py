"""Domain adaptation: a labelled source folder, an unlabelled target folder of the same classes
from another domain (camera, lighting, site); the model is adapted to the target without its labels.

Methods, cheapest first: AdaBN (adabn.py), MCC (mcc.py), DANN (dann.py), self-training
(selftrain via semisupervised/pseudo.py). Model selection without target labels: selection.py.
The domain-gap indicator of the Data step: domain_gap.py. The run: job.py.
"""

from __future__ import annotations

from tlstudio.core.tasks import classification
from tlstudio.core.tasks.adaptation.config import AdaptConfig
from tlstudio.core.tasks.registry import TaskKind, lazy, register

_JOB = "tlstudio.core.tasks.adaptation.job"

# an adapted model is a classifier: it predicts and exports as one
KIND = register(TaskKind(
    kind="adaptation", title="Domain adaptation",
    summary="labelled images + unlabelled images from another camera or site: adapt the model to the new images",
    config_cls=AdaptConfig, run=lazy(_JOB, "run"), resume=lazy(_JOB, "resume"), evaluate=lazy(_JOB, "evaluate"),
    predict=classification.predict, export=classification.export, best_metric=("val_acc", "max"),
    gui_steps=("data", "model", "layers", "adapt", "evaluate", "predict", "export", "runs"),
    eval_lines=lazy(_JOB, "eval_lines"), predict_line=classification.predict_line,
))

__all__ = ["AdaptConfig", "KIND"]
