"""Model files from strangers: nothing they contain is ever executed; bad ones give clear errors."""

from __future__ import annotations

import builtins
import json
import pickle
import struct

import pytest
import timm
import torch
from safetensors.torch import save_file

from tlstudio.core.models.backbones import create_model
from tlstudio.core.errors import UserError
from tlstudio.core.models.weights import WeightsError, load_state_dict_file


class _Evil:
    """Unpickling this calls open(marker, 'w'): a stand-in for any code a hostile file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def _assert_refused(path, marker):
    with pytest.raises(WeightsError) as ei:
        load_state_dict_file(path)
    msg = str(ei.value)
    assert str(path) in msg
    assert "refused" in msg and "run code" in msg
    assert not marker.exists()
    with pytest.raises(WeightsError):
        create_model("test_resnet", 2, init="file", weights_file=path)
    assert not marker.exists()


def test_torch_pickle_with_reduce_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    sd = timm.create_model("test_resnet", pretrained=False).state_dict()
    sd["evil"] = _Evil(marker)
    path = tmp_path / "evil.pth"
    torch.save(sd, path)
    _assert_refused(path, marker)
    # sanity: an unsafe load really would have run it (so the test can fail)
    loaded = torch.load(path, weights_only=False)
    loaded["evil"].close()  # it is the file object open() returned
    assert marker.exists()


def test_legacy_torch_format_with_reduce_is_refused(tmp_path):
    marker = tmp_path / "PWNED_legacy"
    path = tmp_path / "evil_legacy.pt"
    torch.save({"w": torch.zeros(2), "x": _Evil(marker)}, path, _use_new_zipfile_serialization=False)
    _assert_refused(path, marker)


def test_plain_pickle_named_pth_is_refused(tmp_path):
    marker = tmp_path / "PWNED_plain"
    path = tmp_path / "plain.pth"
    path.write_bytes(pickle.dumps({"state_dict": _Evil(marker)}))
    with pytest.raises(WeightsError) as ei:
        load_state_dict_file(path)
    assert str(path) in str(ei.value)
    assert not marker.exists()


def test_weights_error_is_a_user_error():
    assert issubclass(WeightsError, UserError)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not a weights file at all\n",
        b"\x00" * 64,
        struct.pack("<Q", 2**40) + b"{}",  # header length far beyond the file
        struct.pack("<Q", 10) + b"{\"a\":1234}",  # header that is not a tensor table
    ],
    ids=["empty", "text", "zeros", "huge-header", "bad-header"],
)
def test_garbage_safetensors_gives_clear_error(tmp_path, payload):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(payload)
    with pytest.raises(WeightsError) as ei:
        load_state_dict_file(path)
    assert str(path) in str(ei.value)


def test_safetensors_with_offsets_outside_the_file(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}).encode()
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)
    with pytest.raises(WeightsError) as ei:
        load_state_dict_file(path)
    assert "not a valid safetensors file" in str(ei.value)


def test_text_file_named_pth(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(WeightsError) as ei:
        create_model("test_resnet", 2, init="file", weights_file=path)
    assert "notes.pth" in str(ei.value)


def test_wrong_shape_file_names_the_keys(tmp_path):
    sd = timm.create_model("test_resnet", pretrained=False).state_dict()
    sd["layer3.0.conv2.weight"] = torch.zeros(1, 1, 1, 1)
    sd["layer4.0.bn1.weight"] = torch.zeros(3)
    path = tmp_path / "shape.safetensors"
    save_file(sd, str(path))
    with pytest.raises(WeightsError) as ei:
        create_model("test_resnet", 2, init="file", weights_file=path)
    msg = str(ei.value)
    assert "2 with the wrong shape" in msg
    assert "layer3.0.conv2.weight" in msg and "layer4.0.bn1.weight" in msg and "(1, 1, 1, 1)" in msg


def test_file_with_no_tensors(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "note": "no weights here"}, path)
    with pytest.raises(WeightsError) as ei:
        load_state_dict_file(path)
    assert "no tensors" in str(ei.value) or "no weights" in str(ei.value)
