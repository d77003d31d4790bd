"""Step 2, Model: choose a backbone (searchable, size filters, recommended first) and where its
starting weights come from (pretrained / local file / an earlier run / from scratch).

Choosing a backbone builds its structure in a background thread (random weights: fast, no
download) so the Layers step can show its groups at once; the weights themselves are loaded by
the engine when training starts. "Download weights" fetches pretrained weights ahead of time
with a progress bar and Cancel; offline, the WeightsError message with its choices is shown.
"""

from __future__ import annotations

import threading
from typing import Any

from PySide6.QtCore import QModelIndex, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QSpinBox,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from tlstudio.gui.panels.backbone_table import SIZES, BackboneFilter, BackboneTableModel
from tlstudio.gui.panels.model_jobs import default_backbone, initial_trainable
from tlstudio.gui.panels.model_jobs import build_job as _build_job
from tlstudio.gui.panels.model_jobs import download_job as _download_job
from tlstudio.gui.panels.model_jobs import list_models_job as _list_models_job
from tlstudio.gui.panels.model_jobs import quick_list_job as _quick_list_job
from tlstudio.gui.panels.weight_source import WEIGHT_FILE_FILTER, WeightSourceMixin
from tlstudio.gui.state import AppState
from tlstudio.gui.tooltips import tip
from tlstudio.gui.widgets.layer_strip import human_count

# The jobs are module globals here under their old names: the panel looks them up here when it
# starts one, so tests can replace them (monkeypatch model_panel._list_models_job) and
# layers_panel's preview can import _build_job from here.
__all__ = ["SIZES", "WEIGHT_FILE_FILTER", "BackboneFilter", "BackboneTableModel", "ModelPanel", "_build_job"]

META_ABOVE = 30_000_000  # parameters; larger models are built on the meta device for their structure


class ModelPanel(WeightSourceMixin, QWidget):
    models_loaded = Signal(int)  # number of catalogue entries
    model_built = Signal(object)  # the built model (structure)
    model_failed = Signal(str)

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self._gen = 0
        self._dl_gen = 0
        self._dl_cancel: threading.Event | None = None
        self._workers: list[Any] = []
        self._loaded = False
        self._build()
        self._build_timer = QTimer(self, singleShot=True, interval=250)
        self._build_timer.timeout.connect(self.build_model)
        state.dataset_changed.connect(self._dataset_changed)
        state.settings_changed.connect(self._settings_changed)
        self._sync_from_settings()

    # --- layout -------------------------------------------------------------------------
    def _build(self) -> None:
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search backbones, e.g. resnet, efficientnet, vit…")
        self.search.setClearButtonEnabled(True)
        self.search.setToolTip("Type part of a name or family. " + tip("backbone"))
        self.size_combo = QComboBox()
        for label, key in (("All sizes", "all"), ("Small (< 10 M)", "small"), ("Medium (10-50 M)", "medium"),
                           ("Large (> 50 M)", "large")):
            self.size_combo.addItem(label, key)
        self.size_combo.setToolTip(tip("size_filter"))
        self.table_model = BackboneTableModel(self)
        self.proxy = BackboneFilter(self)
        self.proxy.setSourceModel(self.table_model)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)  # recommended first
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.setAlternatingRowColors(True)
        self.table.setToolTip(tip("backbone"))
        h = self.table.horizontalHeader()
        h.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        h.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        h.setSectionResizeMode(2, QHeaderView.ResizeMode.Interactive)
        h.resizeSection(2, 96)
        self.search.setAccessibleName("Search backbones")
        self.size_combo.setAccessibleName("Backbone size")
        self.table.setAccessibleName("Backbones")
        self._filtering = False
        self.search.textChanged.connect(lambda t: self._filter(lambda: self.proxy.set_text(t)))
        self.size_combo.currentIndexChanged.connect(
            lambda: self._filter(lambda: self.proxy.set_size(self.size_combo.currentData())))
        self.table.selectionModel().currentRowChanged.connect(self._row_changed)
        self.count_label = QLabel("Loading the model list…")

        top = QHBoxLayout()
        top.addWidget(self.search, 3)
        top.addWidget(self.size_combo, 1)

        src_box = self._build_source_box()

        self.size_spin = QSpinBox()
        self.size_spin.setRange(0, 1024)
        self.size_spin.setSingleStep(32)
        self.size_spin.setSpecialValueText("model default")
        self.size_spin.setSuffix(" px")
        self.size_spin.setToolTip(tip("input_size") + " Smaller is faster; 0 uses the model's own size.")
        self.size_spin.valueChanged.connect(self._size_changed)
        opts = QGroupBox("Input")
        form = QFormLayout(opts)
        form.addRow("Image size", self.size_spin)

        self.selected_label = QLabel("No backbone selected.")
        self.selected_label.setWordWrap(True)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.setStyleSheet("color: #c5221f;")
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setMaximumHeight(8)
        self.busy.setTextVisible(False)
        self.busy.hide()

        side = QVBoxLayout()
        side.addWidget(self.selected_label)
        side.addWidget(self.busy)
        side.addWidget(src_box)
        side.addWidget(opts)
        side.addWidget(self.message)
        side.addStretch(1)
        side_w = QWidget()
        side_w.setLayout(side)
        side_w.setMaximumWidth(460)

        left = QVBoxLayout()
        left.addLayout(top)
        left.addWidget(self.table, 1)
        left.addWidget(self.count_label)
        lay = QHBoxLayout(self)
        lay.addLayout(left, 3)
        lay.addWidget(side_w, 2)

    # --- catalogue ----------------------------------------------------------------------
    def showEvent(self, ev) -> None:  # noqa: ANN001
        super().showEvent(ev)
        self.load_models()

    def load_models(self) -> None:
        """Fill the list in the background from the shipped catalogue (no torch: at once), then
        from timm only if the catalogue was made for another timm version. Once only."""
        if self._loaded:
            return
        self._loaded = True
        self._start(_quick_list_job, returned=self._quick_ready, errored=self._models_error)

    def _quick_ready(self, res: tuple[list[Any], bool]) -> None:
        infos, need_timm = res
        if infos:
            self._models_ready(infos)
        if need_timm or not infos:
            self._start(_list_models_job, returned=self._models_ready, errored=self._models_error)

    def _filter(self, change) -> None:  # noqa: ANN001
        """Search and size filters only change what is listed, never the chosen backbone: Qt
        moves the current row when it is filtered away, and that move is not a choice."""
        self._filtering = True
        try:
            change()
            name = self.state.settings.get("backbone")
            ix = self._proxy_index(name) if name else QModelIndex()
            sel = self.table.selectionModel()
            if ix.isValid():
                sel.setCurrentIndex(ix, sel.SelectionFlag.ClearAndSelect | sel.SelectionFlag.Rows)
            else:
                sel.clearSelection()
                sel.setCurrentIndex(QModelIndex(), sel.SelectionFlag.NoUpdate)
        finally:
            self._filtering = False
        shown = self.proxy.rowCount()
        hidden = name and not ix.isValid()
        self.count_label.setText(f"{shown:,} of {len(self.table_model.infos):,} backbones shown"
                                 + (f"; the chosen one, {name}, is hidden by the search" if hidden else "")
                                 + ". Click a row to choose it.")

    def _proxy_index(self, name: str) -> QModelIndex:
        r = self.table_model.row_of(name)
        return QModelIndex() if r < 0 else self.proxy.mapFromSource(self.table_model.index(r, 1))

    def _start(self, fn, *args, returned=None, errored=None) -> Any:  # noqa: ANN001
        from tlstudio.gui.workers import start_worker

        return start_worker(self, fn, *args, returned=returned, errored=errored)

    def _models_ready(self, infos: list[Any]) -> None:
        self._filtering = True  # a new list is not a new choice
        try:
            self.table_model.set_infos(infos)
        finally:
            self._filtering = False
        self.count_label.setText(f"{len(infos):,} backbones; ★ = recommended starting points. "
                                 "Click a column to sort.")
        self.models_loaded.emit(len(infos))
        self._select_name(self.state.settings.get("backbone") or default_backbone())

    def _models_error(self, exc: BaseException) -> None:
        self._loaded = False
        self.count_label.setText(f"Could not list the models: {exc}")
        self.state.set_step_status("model", "attention")

    def _select_name(self, name: str) -> bool:
        r = self.table_model.row_of(name)
        if r < 0:
            return False
        ix = self.proxy.mapFromSource(self.table_model.index(r, 1))
        if not ix.isValid():  # hidden by the filters: clear them
            self.search.clear()
            self.size_combo.setCurrentIndex(0)
            ix = self.proxy.mapFromSource(self.table_model.index(r, 1))
        self.table.selectionModel().setCurrentIndex(
            ix, self.table.selectionModel().SelectionFlag.ClearAndSelect
            | self.table.selectionModel().SelectionFlag.Rows)
        self.table.scrollTo(ix)
        return True

    def selected_info(self) -> Any:
        """The chosen backbone (even while a search hides its row)."""
        name = self.state.settings.get("backbone")
        r = self.table_model.row_of(name) if name else -1
        if r >= 0:
            return self.table_model.infos[r]
        ix = self.table.selectionModel().currentIndex()
        return self.table_model.infos[self.proxy.mapToSource(ix).row()] if ix.isValid() else None

    def _row_changed(self, current: QModelIndex, _prev: QModelIndex) -> None:
        if not current.isValid() or self._filtering:
            return
        info = self.table_model.infos[self.proxy.mapToSource(current).row()]
        self.state.set_setting("backbone", info.name)
        self._show_selected(info)
        self._build_timer.start()

    def _show_selected(self, info: Any, n_params: int | None = None) -> None:
        n_params = n_params or info.params
        size = f"{human_count(n_params)} weights" if n_params else "size unknown until built"
        avail = ("weights already on this computer" if info.offline else
                 "pretrained weights downloadable" if info.pretrained else "no pretrained weights")
        self.selected_label.setText(
            f"<b>{info.name}</b> ({info.family}) · {size} · "
            f"{info.input_size} px · {avail}")
        self._update_download_button()

    # --- weight source ------------------------------------------------------------------
    def _sync_from_settings(self) -> None:
        s = self.state.settings
        init = s.get("init", "pretrained")
        self.radios.get(init, self.radios["pretrained"]).setChecked(True)
        self.file_edit.setText(s.get("weights_file") or "")
        self.run_edit.setText(s.get("init_run") or "")
        self.size_spin.blockSignals(True)
        self.size_spin.setValue(int(s.get("image_size") or 0))
        self.size_spin.blockSignals(False)
        if self._loaded and s.get("backbone"):
            info = self.selected_info()
            if info is None or info.name != s["backbone"]:
                self._select_name(s["backbone"])

    def _settings_changed(self, name: str) -> None:
        if name in ("", "init", "weights_file", "init_run", "image_size", "backbone"):
            self._sync_from_settings()

    def _size_changed(self, v: int) -> None:
        self.state.set_setting("image_size", v or None)

    # --- building the structure ---------------------------------------------------------
    def _dataset_changed(self) -> None:
        if self.state.model is not None and self._num_classes() != getattr(self, "_built_classes", None):
            self._build_timer.start()

    def _num_classes(self) -> int:
        r = self.state.scan_report
        return max(2, len(r.classes)) if r is not None else 2

    def build_model(self) -> None:
        info = self.selected_info()
        if info is None:
            return
        self._gen += 1
        gen = self._gen
        kind = self.init_kind()
        wf = self.state.settings.get("weights_file") if kind == "file" else None
        init = "file" if (kind == "file" and wf) else "scratch"  # structure only; file is also validated
        n = self._num_classes()
        # big or unknown-size models are built on the meta device: the structure (and the memory
        # estimate) without allocating gigabytes for weights nobody trains here
        meta = init != "file" and not (0 < info.params <= META_ABOVE)
        self.busy.show()
        self.state.set_step_status("model", "busy")
        self.state.status_message.emit(f"Building {info.name} …")
        self._start(_build_job, info.name, n, init, wf, meta,
                    returned=lambda res, g=gen, i=info, n=n: self._built(g, i, n, res),
                    errored=lambda exc, g=gen: self._build_error(g, exc))

    def _built(self, gen: int, info: Any, n: int, res: tuple[Any, list[Any]]) -> None:
        if gen != self._gen:
            return
        model, groups = res
        self._built_classes = n
        self.busy.hide()
        self.message.setText("")
        trainable = initial_trainable(self.state, groups)
        self.state.model_info = info
        self.state.set_model(info, groups, trainable, model)
        self.state.set_step_status("model", "done")
        self._show_selected(info, sum(g.n_params for g in groups))
        self.state.status_message.emit(f"{info.name}: {len(groups)} layer groups")
        self._check_source()
        self.model_built.emit(model)

    def _build_error(self, gen: int, exc: BaseException) -> None:
        if gen != self._gen:
            return
        self.busy.hide()
        self._fail(str(exc), exc=exc)

    def _fail(self, msg: str, exc: BaseException | None = None, dialog: bool = True) -> None:
        from tlstudio.core.errors import UserError

        self.message.setText(msg)
        self.state.set_step_status("model", "attention")
        self.model_failed.emit(msg)
        if exc is not None and not isinstance(exc, UserError) and dialog:
            from tlstudio.gui.widgets.error_dialog import show_exception

            show_exception(self, "Could not build the model", exc)


if __name__ == "__main__":  # preview on its own: python -m tlstudio.gui.panels.model_panel
    import sys

    from tlstudio.gui.qt_app import make_app

    _app = make_app()
    _p = ModelPanel(AppState())
    _p.resize(1200, 760)
    _p.show()
    sys.exit(_app.exec())
