"""The Data step's "Train / validation split" group: validation fraction and seed (kept in the
settings), the split's counts, and a new split made shortly after either value changes."""

from __future__ import annotations

from collections import Counter

from PySide6.QtWidgets import QDoubleSpinBox, QFormLayout, QGroupBox, QLabel, QSpinBox

from tlstudio.gui.panels.data_scan import make_split_or_none
from tlstudio.gui.tooltips import tip


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
        split_box = QGroupBox("Train / validation split")
        split_box.setToolTip(tip("split"))
        form = QFormLayout(split_box)
        form.addRow("Validation fraction", self.val_spin)
        form.addRow("Seed", self.seed_spin)
        form.addRow(self.split_label)
        return split_box

    def _show_split(self) -> None:
        report, split = self.state.scan_report, self.state.split
        if report is None:
            return
        if split is None:
            self.class_table.set_counts(report.classes, report.counts)
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
