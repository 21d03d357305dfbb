import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

import pth
import torch_writer

STATE = {
    "conv.weight": np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3) / 7,
    "bn.running_var": np.array([0.0, 1.5], dtype=np.float32),
    "bn.num_batches_tracked": np.array(12, dtype=np.int64),
    "fc.weight": np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32),
}


@pytest.mark.parametrize("save", [torch_writer.save_zip, torch_writer.save_legacy])
def test_round_trip_with_storage_offsets(tmp_path, save):
    path = tmp_path / "w.pth"
    save(STATE, path)
    loaded = pth.load_state_dict(path)
    assert list(loaded) == list(STATE)
    for name, value in STATE.items():
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded[name], value)


@pytest.mark.parametrize("save", [torch_writer.save_zip, torch_writer.save_legacy])
def test_truncated_files_are_errors(tmp_path, save):
    path = tmp_path / "w.pth"
    save(STATE, path)
    raw = path.read_bytes()
    for cut in (10, len(raw) // 2, len(raw) - 7):
        path.write_bytes(raw[:cut])
        with pytest.raises(pth.PthError):
            pth.load_state_dict(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_hostile_pickle_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": _Evil()}, protocol=2))
    with pytest.raises(pth.PthError, match="refusing to unpickle global"):
        pth.load_state_dict(path)
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(
        pickle.dumps(pth.LEGACY_MAGIC, 2) + pickle.dumps(pth.LEGACY_PROTOCOL, 2) + pickle.dumps({}, 2)
        + pickle.dumps({"w": _Evil()}, 2)
    )
    with pytest.raises(pth.PthError, match="refusing"):
        pth.load_state_dict(legacy)
    assert not (tmp_path / "pwned").exists()


def test_tensor_outside_its_storage_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch_writer.save_zip({"w": np.ones(6, np.float32)}, path, offset_pad=0)
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    entries["archive/data/0"] = entries["archive/data/0"][:8]  # storage shorter than declared
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in entries.items():
            zf.writestr(n, data)
    with pytest.raises(pth.PthError, match="bytes"):
        pth.load_state_dict(path)


@pytest.mark.parametrize("content", [b"", b"not a pth", b"\x80\x02K\x01.", b"PK\x03\x04garbage"])
def test_garbage_is_an_error(tmp_path, content):
    path = tmp_path / "g.pth"
    path.write_bytes(content)
    with pytest.raises(pth.PthError):
        pth.load_state_dict(path)


def _lite0_weights() -> Path:
    cached = Path(".cache/models/efficientnet-lite0-57934424.pth")
    if not cached.exists():
        pytest.fail(f"{cached} missing: run `make model` first")
    return cached


def test_real_efficientnet_lite0_file_matches_the_measured_facts():
    sd = pth.load_state_dict(_lite0_weights())
    assert len(sd) == 296
    assert sum(k.endswith("num_batches_tracked") for k in sd) == 49
    zero_var = sum(int((v == 0).sum()) for k, v in sd.items() if k.endswith("running_var"))
    assert zero_var == 130
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert sd["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert not any("_se_" in k for k in sd), "Lite has no squeeze-excite"
