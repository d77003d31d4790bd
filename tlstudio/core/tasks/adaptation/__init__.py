"""Domain adaptation: a labelled source folder, an unlabelled target folder of the same classes
from another domain (camera, lighting, site); the model is adapted to the target without its labels.

Methods, cheapest first: AdaBN (adabn.py), MCC (mcc.py), DANN (dann.py), self-training
(selftrain via semisupervised/pseudo.py). Model selection without target labels: selection.py.
The domain-gap indicator of the Data step: domain_gap.py. The run: job.py.
"""

from __future__ import annotations

from tlstudio.core.tasks.adaptation.config import AdaptConfig
from tlstudio.core.tasks.registry import TaskKind, register


def _run(config, stop=None, pause=None):
    from tlstudio.core.tasks.adaptation.job import run

    return run(config, stop, pause)


def _resume(run_dir, stop=None, pause=None):
    from tlstudio.core.tasks.adaptation.job import resume

    return resume(run_dir, stop, pause)


def _evaluate(run_dir, data=None, progress=None):
    from tlstudio.core.tasks.adaptation.job import evaluate

    return evaluate(run_dir, data, progress)


def _predict(run_dir, paths, **opts):
    from tlstudio.core.tasks.adaptation.job import predict

    return predict(run_dir, paths, **opts)


def _export(run_dir, formats, out_dir=None, progress=None, **kw):
    from tlstudio.core.tasks.adaptation.job import export

    return export(run_dir, formats, out_dir=out_dir, progress=progress, **kw)


def _eval_lines(r):
    from tlstudio.core.tasks.adaptation.job import eval_lines

    return eval_lines(r)


def _predict_line(row):
    from tlstudio.core.tasks.classification import predict_line

    return predict_line(row)


KIND = register(TaskKind(
    kind="adaptation", title="Domain adaptation",
    summary="labelled images + unlabelled images from another camera or site: adapt the model to the new images",
    config_cls=AdaptConfig, run=_run, resume=_resume, evaluate=_evaluate, predict=_predict, export=_export,
    best_metric=("val_acc", "max"),
    gui_steps=("data", "model", "layers", "adapt", "evaluate", "predict", "export", "runs"),
    eval_lines=_eval_lines, predict_line=_predict_line,
))

__all__ = ["AdaptConfig", "KIND"]
