"""The Data step's "Train / validation split" group: validation fraction and seed (kept in the
settings), the split's counts, and a new split made shortly after either value changes."""

from __future__ import annotations

from collections import Counter

from PySide6.QtWidgets import QDoubleSpinBox, QFormLayout, QGroupBox, QLabel, QSpinBox

from tlstudio.gui.panels.data_scan import make_split_or_none
from tlstudio.gui.tooltips import tip

SPLIT_TITLE = "Train / validation split"


def anomaly_split_text(data_dir: str | None, total: int, holdout_fraction: float) -> str:
    """What an anomaly fit does with the folder: normal images into the memory bank, some held
    out to set the threshold, the labelled test images (if any) for Evaluate."""
    from tlstudio.core.tasks.anomaly.data import count_normal, layout_of

    if not data_dir:
        return ""
    layout = layout_of(data_dir)
    if layout is None:
        return "Anomaly detection needs normal images only, a good/ folder (plus defect folders) or the MVTec layout."
    n = count_normal(data_dir)
    hold = min(max(1, round(holdout_fraction * n)), max(0, n - 2))  # as the fit holds them out
    text = (f"<b>{n - hold:,}</b> normal images for the memory bank · <b>{hold:,}</b> held out to set the "
            f"threshold ({holdout_fraction:.0%})")
    others = max(0, total - n)
    if layout == "mvtec" and others:
        text += f" · test: <b>{others:,}</b> labelled images (test/)"
    elif layout == "good_defects" and others:
        text += f" · test: <b>{others:,}</b> defect images, with the held-out good ones"
    else:
        text += " · no test images: Evaluate asks for a folder of good and defect images"
    return text


class DataSplitMixin:
    """The split settings of the Data panel, which provides ``self.state``, ``self.class_table``
    and ``self._split_timer`` (single shot, connected to ``_remake_split``)."""

    def _build_split_box(self) -> QGroupBox:
        self.val_spin = QDoubleSpinBox()
        self.val_spin.setRange(0.05, 0.5)
        self.val_spin.setSingleStep(0.05)
        self.val_spin.setDecimals(2)
        self.val_spin.setValue(float(self.state.settings.get("val_fraction", 0.2)))
        self.val_spin.setToolTip(tip("val_fraction"))
        self.val_spin.valueChanged.connect(self._split_params_changed)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(int(self.state.settings.get("seed", 0)))
        self.seed_spin.setToolTip(tip("seed"))
        self.seed_spin.valueChanged.connect(self._split_params_changed)
        self.split_label = QLabel("")
        self.split_label.setToolTip(tip("split"))
        split_box = QGroupBox(SPLIT_TITLE)
        split_box.setToolTip(tip("split"))
        form = QFormLayout(split_box)
        form.addRow("Validation fraction", self.val_spin)
        form.addRow("Seed", self.seed_spin)
        form.addRow(self.split_label)
        self.split_label.setWordWrap(True)
        self.split_box, self._split_form = split_box, form
        self.state.task_kind_changed.connect(lambda _kind: self._show_split())
        return split_box

    def _show_split(self) -> None:
        report, split = self.state.scan_report, self.state.split
        if report is None:
            return
        kind = getattr(self.state, "task_kind", "")
        self.split_box.setTitle("What the fit uses" if kind == "anomaly" else SPLIT_TITLE)
        for row in (0, 1):  # validation fraction, seed: an anomaly fit has neither
            self._split_form.setRowVisible(row, kind != "anomaly")
        if kind == "anomaly":  # no train/validation split: a memory bank and a held-out threshold set
            self.class_table.set_counts(report.classes, report.counts)
            frac = float(self.state.task_settings.get("holdout_fraction", 0.2))
            self.split_label.setText(anomaly_split_text(self.state.data_dir, sum(report.counts.values()), frac))
            return
        if split is None:
            self.class_table.set_counts(report.classes, report.counts)
            if kind == "multitask":
                self.split_label.setText("The split is made over the rows of the label table when training "
                                         "starts (validation fraction and seed above).")
                return
            self.split_label.setText("No split (the data set cannot be trained as it is).")
            return
        tr = Counter(s.label for s in split.train)
        va = Counter(s.label for s in split.val)
        names = report.classes
        self.class_table.set_counts(
            names, report.counts,
            {c: tr.get(i, 0) for i, c in enumerate(names)}, {c: va.get(i, 0) for i, c in enumerate(names)},
        )
        test = f" · test: {len(split.test):,}" if split.test else ""
        self.split_label.setText(f"train: <b>{len(split.train):,}</b> · validation: <b>{len(split.val):,}</b>{test}")

    def _split_params_changed(self) -> None:
        self.state.set_setting("val_fraction", float(self.val_spin.value()))
        self.state.set_setting("seed", int(self.seed_spin.value()))
        self._split_timer.start()

    def _remake_split(self) -> None:
        report = self.state.scan_report
        if report is None:
            return
        self.state.set_split(make_split_or_none(report, float(self.val_spin.value()), int(self.seed_spin.value())))
