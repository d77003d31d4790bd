"""The engine end to end on tiny synthetic folders: it learns, freezes, stops, resumes, chains."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from tlstudio.core import events as E
from tlstudio.core.runs import folder as runs
from tlstudio.core.models.run_model import load_run_model
from tlstudio.core.config import TrainConfig
from tlstudio.core.training.engine import fit, resume
from tlstudio.core.events import drive
from tlstudio.core.data.synthetic import make_synthetic_folder


def run_all(gen, on_event=None):
    """Drive ``gen`` to its end; return (its value, every event)."""
    evs = []

    def seen(ev):
        evs.append(ev)
        if on_event:
            on_event(ev)

    return drive(gen, seen), evs


def cfg(data, out, **kw):
    base = dict(data_dir=str(data), out_dir=str(out), backbone="test_resnet", init="scratch", image_size=48,
                epochs=2, batch_size=8, freeze="none", lr=3e-3, augment="none", seed=0, warmup_epochs=0.0,
                early_stop_patience=None, precision="fp32", workers=0)
    base.update(kw)
    return TrainConfig(**base)


def test_end_to_end_learns_and_writes_run_folder(tmp_path):
    data = make_synthetic_folder(tmp_path / "easy", per_class=24, size=48, easy=True)
    info, evs = run_all(fit(cfg(data, tmp_path / "run", epochs=5, lr=1e-2)))
    assert info.status == "finished"
    kinds = {type(e) for e in evs}
    assert {E.RunStarted, E.BatchEnd, E.EpochEnd, E.Checkpointed, E.Finished} <= kinds
    epochs = [e for e in evs if isinstance(e, E.EpochEnd)]
    assert len(epochs) == 5
    assert info.best_val_acc is not None and info.best_val_acc > 0.9, [e.val_acc for e in epochs]
    run = tmp_path / "run"
    for name in (runs.RUN_JSON, runs.CONFIG_JSON, runs.SPLIT_JSON, runs.HISTORY_CSV, runs.BEST_WEIGHTS, runs.LAST_CKPT):
        assert (run / name).is_file(), name
    back = runs.read_run(run)
    assert back.model.classes == ["circle", "square", "triangle"]
    assert back.versions["torch"] == torch.__version__
    assert back.data["fingerprint"]
    assert len(runs.read_history(run)) == 5
    from tlstudio.core.training.tensorboard import tensorboard_available

    if tensorboard_available():  # TensorBoard event files beside the CSV
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # the best weights rebuild into a model that scores on the validation split what the run
    # recorded for its best epoch (fp32 here, so training's validation and this agree exactly)
    from tlstudio.core.evaluation.evaluate import evaluate_model

    model, saved = load_run_model(run)
    rep = evaluate_model(model, saved.model, list(runs.read_split(run).val))
    assert rep.accuracy == pytest.approx(back.metrics["val_acc"], abs=1e-6)
    best_row = runs.read_history(run)[back.best_epoch]
    assert all(best_row[k] == pytest.approx(v) for k, v in back.metrics.items())


def test_frozen_params_and_bn_stats_bit_identical(tmp_path):
    import timm
    from safetensors.torch import save_file

    from tlstudio.core.models import layers

    data = make_synthetic_folder(tmp_path / "d", per_class=10, size=48, easy=True)
    # start from a weights file we made, so the starting point of every frozen tensor is known
    src = timm.create_model("test_resnet", num_classes=3)
    for m in src.modules():  # non-trivial BN statistics: a reset would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.9, 1.1)
    start = {k: v.clone() for k, v in src.state_dict().items()}
    save_file({k: v.contiguous() for k, v in start.items()}, str(tmp_path / "w.safetensors"))
    info, _ = run_all(fit(cfg(data, tmp_path / "run", init="file", weights_file=str(tmp_path / "w.safetensors"),
                              freeze="last:1", epochs=2, cache="off", augment="light")))
    assert info.status == "finished"
    model, _ = load_run_model(tmp_path / "run", which="last")
    trainable = torch.load(tmp_path / "run" / runs.LAST_CKPT, weights_only=True)["trainable"]
    groups = layers.layer_groups(model)
    assert not all(trainable) and trainable[-1]
    end = model.state_dict()
    frozen_modules = {n.rsplit(".", 1)[0] for g, t in zip(groups, trainable) if not t for n in g.param_names}
    checked = 0
    for k, v in end.items():
        if k.rsplit(".", 1)[0] in frozen_modules:  # weights and BatchNorm running stats of frozen groups
            assert torch.equal(v, start[k]), k
            checked += 1
    assert checked > 10 and any("running_mean" in k for k in end if k.rsplit(".", 1)[0] in frozen_modules)
    moved = [k for g, t in zip(groups, trainable) if t and not g.is_head for k in g.param_names
             if not torch.equal(end[k], start[k])]
    assert moved, "trainable body parameters did not change"


def _final_state(run_dir):
    return load_run_model(run_dir, which="last")[0].state_dict()


def test_stop_then_resume_equals_uninterrupted(tmp_path):
    data = make_synthetic_folder(tmp_path / "d", per_class=10, size=48)
    kw = dict(epochs=3, augment="light", freeze="none", cache="off")
    run_all(fit(cfg(data, tmp_path / "full", **kw)))

    stop = threading.Event()
    seen = {"n": 0}

    def stop_mid_epoch(ev):
        if isinstance(ev, E.BatchEnd):
            seen["n"] += 1
            if ev.epoch == 1 and ev.batch == 1:
                stop.set()

    info, evs = run_all(fit(cfg(data, tmp_path / "part", **kw), stop=stop), stop_mid_epoch)
    assert info.status == "stopped"
    assert any(isinstance(e, E.Checkpointed) and e.kind == "last" for e in evs)
    info2, evs2 = run_all(resume(tmp_path / "part"))
    assert info2.status == "finished"
    a, b = _final_state(tmp_path / "full"), _final_state(tmp_path / "part")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    keys = ("epoch", "train_loss", "val_loss", "val_acc")
    full = [[r[k] for k in keys] for r in runs.read_history(tmp_path / "full")]
    part = [[r[k] for k in keys] for r in runs.read_history(tmp_path / "part")]
    assert full == part


def test_last_checkpoint_after_the_final_epoch_drops_the_optimiser_and_still_resumes(tmp_path):
    """Once every epoch is done nothing is left to train: last.pt keeps weights, schedule and
    trackers but not AdamW's moments (twice the model, fsynced while the user waits). A run
    killed after that write, before it was marked finished, still resumes to its end."""
    data = make_synthetic_folder(tmp_path / "d", per_class=6, size=48)
    stop = threading.Event()

    def stop_in_first_epoch(ev):
        if isinstance(ev, E.BatchEnd) and ev.epoch == 0 and ev.batch == 0:
            stop.set()

    info, _ = run_all(fit(cfg(data, tmp_path / "stopped"), stop=stop), stop_in_first_epoch)
    assert info.status == "stopped"
    mid = torch.load(tmp_path / "stopped" / runs.LAST_CKPT, weights_only=True)
    assert mid["optimizer"]["state"]  # mid-run: the moments are needed to continue
    run = tmp_path / "full"
    info, _ = run_all(fit(cfg(data, run)))
    assert info.status == "finished"
    end = torch.load(run / runs.LAST_CKPT, weights_only=True)
    assert end["optimizer"] == {} and end["epoch"] == 2 and end["model"]
    assert (run / runs.LAST_CKPT).stat().st_size < 0.6 * (tmp_path / "stopped" / runs.LAST_CKPT).stat().st_size
    # killed between last.pt and run.json: the run still says "running"
    killed = runs.read_run(run)
    killed.status = "running"
    runs.write_run(run, killed)
    (run / runs.EVAL_JSON).unlink()
    info2, _ = run_all(resume(run))
    assert info2.status == "finished" and info2.epochs_done == 2
    assert (run / runs.EVAL_JSON).is_file()


def test_an_early_stopped_run_keeps_no_optimiser_state(tmp_path):
    """An early-stopped run is not resumed, so its last last.pt needs no AdamW moments either."""
    data = make_synthetic_folder(tmp_path / "d", per_class=6, size=48)
    run = tmp_path / "early"
    # a learning rate too small to change anything: no epoch after the first improves
    info, evs = run_all(fit(cfg(data, run, epochs=6, lr=1e-12, early_stop_patience=1)))
    assert info.status == "early_stopped" and info.epochs_done < 6
    end = torch.load(run / runs.LAST_CKPT, weights_only=True)
    assert end["optimizer"] == {} and end["epoch"] == info.epochs_done and end["model"]


@pytest.mark.slow  # three real trainings: ~1 min on a quiet 2-core CPU, ten on a busy one
@pytest.mark.timeout(1800)
def test_chained_transfer_beats_scratch_on_small_related_task(tmp_path):
    classes = ("circle", "square", "triangle", "cross")
    source = make_synthetic_folder(tmp_path / "src", classes=classes, per_class=60, size=48, seed=1)
    target = make_synthetic_folder(tmp_path / "tgt", classes=classes, per_class=6, size=48, seed=2)
    common = dict(epochs=8, freeze="none", augment="light", cache="off")
    src_info, _ = run_all(fit(cfg(source, tmp_path / "src_run", **{**common, "epochs": 10, "lr": 5e-3})))
    assert src_info.best_val_acc > 0.5
    chained, _ = run_all(fit(cfg(target, tmp_path / "chained", init="run", init_run=str(tmp_path / "src_run"),
                                 val_fraction=0.5, **common)))
    scratch, _ = run_all(fit(cfg(target, tmp_path / "scratch", val_fraction=0.5, **common)))
    assert chained.best_val_acc > scratch.best_val_acc + 0.1, (chained.best_val_acc, scratch.best_val_acc)


def test_head_only_uses_feature_cache_and_keeps_body(tmp_path):
    import timm
    from safetensors.torch import save_file

    data = make_synthetic_folder(tmp_path / "d", per_class=8, size=48, easy=True)
    src = timm.create_model("test_resnet", num_classes=3)
    start = {k: v.clone() for k, v in src.state_dict().items()}
    save_file({k: v.contiguous() for k, v in start.items()}, str(tmp_path / "w.safetensors"))
    info, evs = run_all(fit(cfg(data, tmp_path / "run", freeze="head", epochs=2, init="file",
                                weights_file=str(tmp_path / "w.safetensors"))))
    assert info.status == "finished"
    started = next(e for e in evs if isinstance(e, E.RunStarted))
    assert started.trainable_params < started.total_params / 10
    # the body's features were computed once into the cache (Progress "cache"), not per batch
    assert any(isinstance(e, E.Progress) and e.task == "cache" for e in evs)
    model, _ = load_run_model(tmp_path / "run")
    head = {n for n, _ in model.get_classifier().named_parameters()}
    end = model.state_dict()
    body = [k for k in end if not any(k.endswith(h) and "fc" in k for h in head)]
    assert body and all(torch.equal(end[k], start[k]) for k in body if k in start and "num_batches" not in k)
    assert not torch.equal(end["fc.weight"], start["fc.weight"])


def test_gradual_unfreezing_opens_groups(tmp_path):
    data = make_synthetic_folder(tmp_path / "d", per_class=6, size=48, easy=True)
    info, evs = run_all(fit(cfg(data, tmp_path / "run", freeze="gradual:1", epochs=3)))
    unfrozen = [e for e in evs if isinstance(e, E.Unfrozen)]
    assert len(unfrozen) == 2
    assert unfrozen[0].trainable_params < unfrozen[1].trainable_params


def test_baseline_reports_gain_of_transfer(tmp_path):
    data = make_synthetic_folder(tmp_path / "d", per_class=6, size=48, easy=True)
    info, evs = run_all(fit(cfg(data, tmp_path / "run", epochs=1, baseline=True)))
    assert info.baseline is not None
    # the gain compares the two run folders' own best accuracies, read back independently
    main = json.loads((tmp_path / "run" / runs.RUN_JSON).read_text())
    base = json.loads((tmp_path / "run" / runs.BASELINE_DIR / runs.RUN_JSON).read_text())
    assert base["config"]["init"] == "scratch" and base["config"]["freeze"] == "none"
    assert main["baseline"]["scratch_val_acc"] == base["metrics"]["val_acc"]
    assert main["baseline"]["transfer_val_acc"] == main["metrics"]["val_acc"]
    assert abs(main["baseline"]["gain"] - (main["metrics"]["val_acc"] - base["metrics"]["val_acc"])) < 1e-9
    assert main["baseline"]["negative_transfer"] == (main["metrics"]["val_acc"] < base["metrics"]["val_acc"])


def test_nan_loss_stops_with_message(tmp_path):
    data = make_synthetic_folder(tmp_path / "d", per_class=6, size=48, easy=True)
    info, evs = run_all(fit(cfg(data, tmp_path / "run", epochs=3, lr=1e9, optimizer="sgd")))
    fin = [e for e in evs if isinstance(e, E.Finished)][-1]
    assert info.status == "failed" and "loss became" in fin.message
    assert runs.read_run(tmp_path / "run").status == "failed"


def test_nan_loss_after_a_good_epoch_keeps_the_best_weights(tmp_path):
    """An objective whose loss turns NaN in epoch 2: the run fails with the message, and the best
    weights of epoch 1 stay on disk and load."""
    from tlstudio.core.training.objectives import ClassificationObjective

    class NanInEpoch2(ClassificationObjective):
        epoch = 0

        def on_epoch_start(self, epoch, ctx):
            self.epoch = epoch
            return ()

        def loss(self, model, x, y, idx):
            loss, parts = super().loss(model, x, y, idx)
            return (loss * float("nan") if self.epoch == 1 else loss), parts

    data = make_synthetic_folder(tmp_path / "d", per_class=6, size=48, easy=True)
    info, evs = run_all(fit(cfg(data, tmp_path / "run", epochs=3), objective=NanInEpoch2()))
    fin = [e for e in evs if isinstance(e, E.Finished)][-1]
    assert info.status == "failed" and "epoch 2" in fin.message and "best weights so far are kept" in fin.message
    assert info.best_epoch == 0 and (tmp_path / "run" / runs.BEST_WEIGHTS).is_file()
    load_run_model(tmp_path / "run")


def test_existing_run_folder_is_not_overwritten(tmp_path):
    from tlstudio.core.errors import UserError

    data = make_synthetic_folder(tmp_path / "d", per_class=5, size=48, easy=True)
    run_all(fit(cfg(data, tmp_path / "run", epochs=1)))
    with pytest.raises(UserError, match="already holds a run"):
        run_all(fit(cfg(data, tmp_path / "run", epochs=1)))


def test_stop_during_a_download_wins_while_progress_keeps_arriving():
    """A download that reports progress every few ms: Stop must end the wait at once, not only
    after a pause in the progress (the weights download used to run on for seconds)."""
    from tlstudio.core.training.prepare import RunStopped, in_thread

    stop, released = threading.Event(), threading.Event()

    def endless_download(progress):
        n = 0
        while not released.is_set():
            n += 1
            progress(n, None)
            released.wait(0.002)

    gen = in_thread(endless_download, "download", stop)
    try:
        for _ in range(3):
            assert isinstance(next(gen), E.Progress)
        stop.set()
        with pytest.raises(RunStopped):
            next(gen)  # the very next step notices the stop, although progress never pauses
    finally:
        released.set()


def test_default_settings_from_the_app_train(tmp_path):
    """What the app sends by default: automatic precision (timed per size when the body trains)
    and no image size (the model's own). This crashed before the first epoch (int(None))."""
    data = make_synthetic_folder(tmp_path / "d", per_class=4, size=48, easy=True)
    info, evs = run_all(fit(cfg(data, tmp_path / "run", image_size=None, precision="auto", epochs=1)))
    assert info.status == "finished"
    size = runs.read_run(tmp_path / "run").model.image_size
    assert size > 0 and any(isinstance(e, E.Log) and f"{size} px" in e.message for e in evs)
