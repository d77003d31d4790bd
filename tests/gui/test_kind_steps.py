"""Which steps the window shows for each kind of learning (tlstudio.gui.steps + the registry)."""

from __future__ import annotations

from tlstudio.core.tasks.registry import all_kinds, get
from tlstudio.gui import steps


def test_every_kind_shows_data_and_only_steps_that_exist():
    ids = set(steps.step_ids())
    for kind in all_kinds():
        shown = steps.visible_ids(kind.kind)
        assert shown and shown[0] == "data", kind.kind
        assert set(shown) <= ids
        missing = [s for s in kind.gui_steps if s not in ids]
        assert not missing, f"{kind.kind} declares steps the window does not have: {missing}"


def test_a_kind_without_training_hides_the_layers_and_a_kind_declares_its_steps():
    knn = steps.visible_ids("knn")
    assert knn == [s for s in steps.step_ids() if s in get("knn").gui_steps]
    assert "layers" not in knn and "export" not in knn and "train" in knn
    # classification, the default kind, shows every step not made for another kind
    classic = steps.visible_ids("classification")
    assert {"layers", "train", "distill", "evaluate", "export"} <= set(classic)
    made_for_others = [s.id for s in steps.STEPS if s.kinds is not None and "classification" not in s.kinds]
    assert not set(made_for_others) & set(classic)
