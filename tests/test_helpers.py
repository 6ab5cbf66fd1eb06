"""The helpers that exist once: the yaml loader, the name-and-shape weight copy, check_anchor_order, the progress
bar format and OpenCV's thread setting."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from models.registry import YamlError
from models.yolo import load_model_yaml
from utils.general import load_yaml
from utils.torch_utils import load_matching, matching_tensors

ROOT = Path(__file__).resolve().parents[1]


def test_load_yaml_one_line_errors(tmp_path):
    bad, listed, empty, good = (tmp_path / f"{n}.yaml" for n in ("bad", "listed", "empty", "good"))
    bad.write_text("a: [1, 2\nb: 3\n")
    listed.write_text("- 1\n- 2\n")
    empty.write_text("")
    good.write_text("lr0: 0.01\nnames: [a, b]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: invalid yaml \(") as e:
        load_yaml(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"listed\.yaml: expected a mapping of things$"):
        load_yaml(listed, "a mapping of things")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_yaml(empty)
    assert load_yaml(empty, empty_ok=True) == {} and load_yaml(good) == {"lr0": 0.01, "names": ["a", "b"]}
    with pytest.raises(YamlError, match=r"listed\.yaml: expected a mapping with nc, backbone and head"):
        load_model_yaml(listed)  # the model builder's loader is this one, with its own error type


def test_weight_copy_by_name_and_shape():
    torch.manual_seed(0)
    dst = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    src = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(4))
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    sd = {f"net.{k}": v.double() for k, v in src.state_dict().items()}
    picked = matching_tensors(dst.state_dict(), sd, prefix="net.")
    assert sorted(picked) == ["0.bias", "0.weight", "1.num_batches_tracked"]  # the BatchNorm of 4 does not fit
    assert all(v.dtype == dst.state_dict()[k].dtype for k, v in picked.items())  # cast to the model's dtype
    assert load_matching(dst, sd, prefix="net.", exclude=("bias",)) == (2, len(before))
    assert torch.equal(dst[0].weight, src[0].weight) and torch.equal(dst[0].bias, before["0.bias"])
    assert torch.equal(dst[1].weight, before["1.weight"])


def _py_sources() -> dict[str, str]:
    skip = ("tests", ".venv", "runs", "datasets")
    return {str(p.relative_to(ROOT)): p.read_text(errors="ignore") for p in ROOT.rglob("*.py")
            if p.relative_to(ROOT).parts[0] not in skip}


@pytest.mark.parametrize("pattern, home", [
    (r"def check_anchor_order\(", "utils/training/autoanchor.py"),
    (r"\{l_bar\}\{bar:10\}\{r_bar\}", "utils/general.py"),
    (r"cv2\.setNumThreads\(", "utils/general.py"),
    (r"except yaml\.YAMLError as e:\s+raise", "utils/general.py"),  # a yaml error turned into a one-line error
])
def test_helper_defined_once(pattern, home):
    where = [f for f, text in _py_sources().items() if re.search(pattern, text)]
    assert where == [home], f"{pattern} is in {where}: call the one in {home}"
