"""Files from strangers (label caches, TorchScript weights, model yamls, class names in checkpoints) run no code,
change no process-wide state, write nothing outside the run folder and allocate nothing big (issue 14).

Every test makes its own crafted file. Where a payload would leave a trace (a marker file), the test first shows
that the payload is live (it does create the marker when loaded the unsafe way), so a pass means the loader
refused it rather than that the payload was broken."""
from __future__ import annotations

import contextlib
import copy
import json
import pickle
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

import detect
import hubconf
import models.experimental  # the backend imports it on first use: before any snapshot
import val
from models.registry import YamlError, register
from models.yolo import Model
from utils.backends import BackendError, DetectBackend
from utils.checkpoint import make_checkpoint, save_checkpoint
from utils.data.dataloaders import LoadImagesAndLabels
from utils.general import safe_path_component
from utils.inference.predictor import load

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated:FutureWarning")]

# ------------------------------------------------------------------------------------------------ shared helpers
WATCHED = ("models", "utils", "detect", "val", "hubconf", "torch.nn", "torch._utils", "pathlib", "os", "posixpath",
           "builtins", "pickle", "json", "tempfile", "shutil")
LAZY = {("tempfile", "_name_sequence")}  # the stdlib makes its temp-name generator on first use


def module_state() -> dict:
    """Identity of every attribute of the watched modules and of the classes they define (and the contents of the
    model registry's tables): equal snapshots mean nothing was set, replaced or added process-wide."""
    state = {}
    for name, mod in list(sys.modules.items()):
        if mod is None or not any(name == w or name.startswith(w + ".") for w in WATCHED):
            continue
        for k, v in list(vars(mod).items()):
            if k == "__warningregistry__" or (name, k) in LAZY:  # the warnings machinery's own bookkeeping
                continue
            state[(name, k)] = id(v)
            if isinstance(v, type) and v.__module__ == name:
                for ck, cv in list(vars(v).items()):
                    state[(name, k, ck)] = id(cv)
            if name == "models.registry" and isinstance(v, dict):
                state[(name, k, "items")] = tuple((str(a), id(b)) for a, b in v.items())
    return state


@pytest.fixture
def unchanged_modules():
    """Asserts, after the test, that no attribute of any watched module or class changed."""
    before = module_state()
    yield
    after = module_state()
    modules_before = {k[0] for k in before}
    changed = sorted(str(k) for k in before.keys() | after.keys()
                     if k[0] in modules_before and before.get(k) != after.get(k))
    assert not changed, f"process-wide state changed: {changed[:10]}"


def one_line(e: BaseException | str, limit: int = 300) -> str:
    text = str(e.value if hasattr(e, "value") else e)
    assert "\n" not in text.strip() and len(text) <= limit, text
    return text


TINY = {"nc": 4, "depth_multiple": 0.33, "width_multiple": 0.25, "anchors": [[10, 13, 16, 30, 33, 23, 40, 40]],
        "backbone": [[-1, 1, "Conv", [32, 3, 2]], [-1, 1, "Conv", [64, 3, 2]], [-1, 1, "Conv", [64, 3, 2]]],
        "head": [[[-1], 1, "Detect", ["nc", "anchors"]]]}


def tiny(**changes) -> dict:
    d = copy.deepcopy(TINY)
    d.update(changes)
    d["yaml_file"] = "crafted.yaml"
    return d


def write_yaml(path: Path, d: dict) -> Path:
    path.write_text(yaml.safe_dump({k: v for k, v in d.items() if k != "yaml_file"}, sort_keys=False))
    return path


def image(seed: int = 0, h: int = 64, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------- 1. label cache
class _Payload:
    """Unpickling this creates the marker file (builtins.open(marker, 'w')): what a shipped cache could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _dataset(root: Path, n: int = 3) -> tuple[Path, list[np.ndarray]]:
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    labels = []
    for i in range(n):
        cv2.imwrite(str(root / "images" / "train" / f"im{i}.png"), image(i, 40, 48))
        lb = np.array([[i % 3, 0.5, 0.5, 0.25, 0.5], [1, 0.25, 0.75, 0.125, 0.25]][: 1 + i % 2], np.float32)
        (root / "labels" / "train" / f"im{i}.txt").write_text("".join(" ".join(f"{v:g}" for v in r) + "\n"
                                                                      for r in lb))
        labels.append(lb)
    return root / "images" / "train", labels


def _labels_by_stem(ds: LoadImagesAndLabels) -> dict[str, np.ndarray]:
    return {Path(f).stem: lb for f, lb in zip(ds.im_files, ds.labels)}


def _assert_labels(ds: LoadImagesAndLabels, labels: list[np.ndarray]) -> None:
    got = _labels_by_stem(ds)
    assert sorted(got) == [f"im{i}" for i in range(len(labels))]
    for i, lb in enumerate(labels):
        np.testing.assert_array_equal(got[f"im{i}"], lb)  # float32 values written with %g read back exactly


def test_pickle_label_cache_is_never_loaded(tmp_path, log_lines, unchanged_modules):
    src, labels = _dataset(tmp_path / "d")
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists(), "the payload is live: plain pickle.load runs it"
    marker = tmp_path / "marker"
    cache = tmp_path / "d" / "labels" / "train.cache"
    cache.write_bytes(pickle.dumps({"version": 1, "hash": "x", "payload": _Payload(marker)}))
    ds = LoadImagesAndLabels(src, img_size=64)
    assert not marker.exists()
    warnings = [m for m in log_lines if "train.cache" in m and "WARNING" in m]
    assert len(warnings) == 1 and "pickle" in one_line(warnings[0]) and "rebuilding" in warnings[0]
    assert not ds.cache_loaded
    _assert_labels(ds, labels)
    assert cache.read_bytes()[:1] == b"{" and json.loads(cache.read_text())["version"] == 2  # replaced by JSON
    again = LoadImagesAndLabels(src, img_size=64)
    assert again.cache_loaded and not marker.exists()
    _assert_labels(again, labels)


def test_truncated_forged_and_oversized_caches_are_rebuilt(tmp_path, log_lines, unchanged_modules):
    src, labels = _dataset(tmp_path / "d")
    LoadImagesAndLabels(src, img_size=64)
    cache = tmp_path / "d" / "labels" / "train.cache"
    good = json.loads(cache.read_text())
    assert good["hash"] and len(good["counts"]) == 3

    forged = {
        "truncated": cache.read_text()[: len(cache.read_text()) // 2],
        "bad class id": json.dumps({**good, "labels": __import__("base64").b64encode(
            np.full((sum(good["counts"]), 5), -1, "<f4").tobytes()).decode()}),
        "absurd count": json.dumps({**good, "counts": [10 ** 12, 0, 0]}),
        "absurd shape": json.dumps({**good, "shapes": [[10 ** 9, 10 ** 9]] * 3}),
        "wrong version": json.dumps({**good, "version": 99}),
        "stale hash": json.dumps({**good, "hash": "0" * 64}),
        "not a dict": "[1, 2, 3]",
        "deep nesting": "[" * 100000,
        "binary junk": "\x00\xff garbage",
    }
    for why, text in forged.items():
        cache.write_text(text, errors="surrogateescape")
        log_lines.clear()
        ds = LoadImagesAndLabels(src, img_size=64)
        warnings = [m for m in log_lines if "train.cache" in m and "WARNING" in m]
        assert not ds.cache_loaded and len(warnings) == 1 and "rebuilding" in one_line(warnings[0]), (why, warnings)
        _assert_labels(ds, labels)
        assert LoadImagesAndLabels(src, img_size=64).cache_loaded, why  # the rebuilt cache is good again


def test_unwritable_cache_folder_warns_and_loads(tmp_path, log_lines, monkeypatch):
    src, labels = _dataset(tmp_path / "d")

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr("utils.data.dataloaders.tempfile.mkstemp", refuse)  # a read-only folder (tests may run as root)
    ds = LoadImagesAndLabels(src, img_size=64)
    _assert_labels(ds, labels)
    assert not (tmp_path / "d" / "labels" / "train.cache").exists()
    assert any("not writeable" in m and "Permission denied" in one_line(m) for m in log_lines)
    assert not list((tmp_path / "d" / "labels").glob("*.tmp"))


def test_planted_disk_cache_npy_files_are_not_trusted(tmp_path, log_lines, unchanged_modules):
    """--cache disk reuses images/x.npy when present: a dataset can ship a pickled object array or a header
    claiming 30 GB in a few bytes. Neither is unpickled or allocated; the real image is read and re-cached."""
    src, _ = _dataset(tmp_path / "d")
    marker = tmp_path / "marker"
    obj = np.empty(1, dtype=object)
    obj[0] = _Payload(marker)
    np.save(src / "im0.npy", obj, allow_pickle=True)
    with open(src / "im1.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (100000, 100000, 3)})
        fh.write(b"\x00" * 16)
    np.save(src / "im2.npy", np.zeros((5, 5, 3), np.uint8))  # a valid array, but not this image
    ds = LoadImagesAndLabels(src, img_size=64, cache_images="disk")
    plain = LoadImagesAndLabels(src, img_size=64)
    for i in range(3):
        np.testing.assert_array_equal(ds.load_image(i)[0], plain.load_image(i)[0])
        assert np.load(src / f"im{i}.npy", allow_pickle=False).shape == (40, 48, 3)  # replaced by the real image
    assert not marker.exists()
    assert not list(src.glob("*.tmp.npy"))


# --------------------------------------------------------------------------------------------- 2. TorchScript
class _EvilScript(nn.Module):
    """A TorchScript module whose forward creates a file of its choosing (torch.from_file, shared mapping)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        t = torch.from_file(self.path, True, 8, dtype=torch.uint8)
        return x + t.sum() * 0


@pytest.fixture
def evil_script(tmp_path):
    d = tmp_path / "ts"
    d.mkdir()
    marker = d / "marker"
    f = d / "evil.torchscript"
    torch.jit.save(torch.jit.script(_EvilScript(str(marker))), str(f))
    return f, marker


def test_torchscript_refused_by_default_everywhere(evil_script, tmp_path, log_lines, unchanged_modules):
    f, marker = evil_script
    for attempt in (lambda: DetectBackend(f), lambda: load(f), lambda: hubconf.custom(path=str(f)),
                    lambda: hubconf.custom(path=str(f), autoshape=False)):
        with pytest.raises(BackendError, match="--trust-weights") as e:
            attempt()
        msg = one_line(e, 250)
        assert "evil.torchscript" in msg and "trusted=True" in msg and len(msg) - len(str(f)) < 120
    cv2.imwrite(str(tmp_path / "a.png"), image())
    rc = detect.main(detect.parse_opt(["--weights", str(f), "--source", str(tmp_path / "a.png"), "--imgsz", "64",
                                       "--project", str(tmp_path / "runs"), "--device", "cpu"]))
    assert rc == 1 and "--trust-weights" in one_line(log_lines[-1], 250)
    src, _ = _dataset(tmp_path / "d", n=1)
    data = write_yaml(tmp_path / "data.yaml", {"path": str(tmp_path / "d"), "train": "images/train",
                                               "val": "images/train", "names": {0: "a", 1: "b", 2: "c"}})
    with pytest.raises(BackendError, match="--trust-weights"):
        val.run(str(data), weights=str(f), imgsz=64, batch_size=1, workers=0, device="cpu", plots=False,
                project=str(tmp_path / "val"))
    assert val.parse_opt(["--trust-weights"]).trust_weights and not val.parse_opt([]).trust_weights
    assert not marker.exists()


def test_torchscript_loads_with_the_opt_in(evil_script):
    f, marker = evil_script
    assert not marker.exists()
    b = DetectBackend(f, trusted=True)
    assert b.jit and load(f, trusted=True).backend.jit and hubconf.custom(path=str(f), trusted=True).backend.jit
    assert detect.parse_opt(["--trust-weights"]).trust_weights and not detect.parse_opt([]).trust_weights
    with torch.no_grad():
        b.model(torch.zeros(1))
    assert marker.exists(), "with the opt-in the file's own code runs: why it is refused by default"


# ------------------------------------------------------------------------- 4. building changes nothing global
def test_building_good_and_rejected_yamls_changes_nothing(unchanged_modules):
    torch.manual_seed(0)
    first = Model(tiny(), verbose=False).state_dict()
    snapshot = module_state()
    rejected = [
        [[-1, 1, "nn.Module", []]],  # builds, then fails on the probe forward
        [[-1, 1, "nn.Conv2d", [3, 8, 3]], [-1, 1, "nn.BatchNorm2d", []], [-1, 1, "nn.Conv2d", ["x"]]],
        [[-1, 1, "nn.functional", []]],  # a module, not a class
        [[-1, 1, "nn.__class__", []]],
        [[-1, 1, "nn.Parameter", [1]]],
    ]
    for rows in rejected:
        with pytest.raises(YamlError) as e:
            Model(tiny(backbone=rows, head=[]), verbose=False)
        assert "crafted.yaml" in one_line(e)
    assert module_state() == snapshot
    for cls in (nn.Module, nn.Conv2d, nn.BatchNorm2d, nn.Upsample):
        assert "yaml_args" not in vars(cls)
    with pytest.raises(TypeError, match="needs a 'yaml_args'"):  # nothing inherited a policy from nn.Module
        register(type("NoPolicy", (nn.Module,), {}))
    torch.manual_seed(0)
    later = Model(tiny(), verbose=False).state_dict()
    assert first.keys() == later.keys() and all(torch.equal(first[k], later[k]) for k in first)


def test_register_with_policy_leaves_the_class_alone(unchanged_modules):
    from models import registry

    class Scaled(nn.Conv2d):
        pass
    before = dict(vars(Scaled))
    try:
        register(Scaled, name="ScaledForTest", yaml_args="channels")
        assert dict(vars(Scaled)) == before and registry.policy_of(Scaled) is registry.channels
        m = Model(tiny(backbone=[[-1, 1, "ScaledForTest", [32, 3, 2]], *TINY["backbone"][1:]]), verbose=False)
        assert isinstance(m.model[0], Scaled) and m.model[0].out_channels == 8
    finally:
        registry.REGISTRY.pop("ScaledForTest", None)
        registry._POLICY_OF.pop(Scaled, None)


# --------------------------------------------------------------------------------------- 5. paths from files
CRAFTED_NAMES = ["../../x", None, "a/b", ".."]  # None: an absolute path, filled in per test


def _all_class_model(names: dict) -> nn.Module:
    """A tiny model whose head scores anchor k as class k everywhere, so every class gets detections."""
    torch.manual_seed(0)
    m = Model(tiny(), verbose=False).eval()
    det = m.model[-1]
    with torch.no_grad():
        for conv in det.m:
            conv.weight.zero_()
            b = conv.bias.view(det.na, det.no)
            b[:] = -8.0
            b[:, :4] = 0.0
            b[:, 4] = 8.0
            for a in range(det.na):
                b[a, 5 + a] = 8.0
    m.names = dict(names)
    return m


def test_class_names_never_leave_the_run_folder(tmp_path, log_lines, unchanged_modules):
    outside = tmp_path / "outside" / "y"
    names = dict(enumerate(["../../x", str(outside), "a/b", ".."]))
    w = save_checkpoint(make_checkpoint(_all_class_model(names)), tmp_path / "w" / "names.pt")
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "im.png"), image(1))
    project = tmp_path / "p1" / "p2" / "runs"  # '../../x' from crops/<name> would land in p1/p2 or runs
    before = {p for p in tmp_path.rglob("*")}
    save_dir = detect.run(weights=str(w), source=str(src), imgsz=(64, 64), conf_thres=0.5, device="cpu",
                          save_txt=True, save_crop=True, project=str(project), name="exp")
    new = {p for p in tmp_path.rglob("*")} - before
    files = [p for p in new if p.is_file()]
    assert files and all(save_dir in p.parents for p in files), sorted(map(str, files))
    assert not outside.exists()
    crops = sorted(p.name for p in (save_dir / "crops").iterdir())
    assert len(crops) == 4 and all((save_dir / "crops" / c).is_dir() for c in crops)  # one folder per class
    assert crops == sorted(safe_path_component(n, str(i)) for i, n in names.items())
    assert "3" in crops  # '..' has nothing left: the class id names its folder


@pytest.mark.parametrize("name,expect", [("../../x", "_.._x"), ("/abs/y", "_abs_y"), ("a/b", "a_b"), ("..", "7"),
                                         ("C:\\win\\sys", "_win_sys"), ("a\x00b", "a_b"), (".hidden", "hidden"),
                                         ("", "7"), ("person", "person"), ("traffic light", "traffic light"),
                                         ("nul", "_nul")])
def test_safe_path_component(name, expect):
    assert safe_path_component(name, "7") == expect
    assert len(safe_path_component("é" * 500, "7").encode()) <= 120


# ---------------------------------------------------------------------------------- 6. sizes in model yamls
BOMBS = {
    "nc": dict(nc=10 ** 9),
    "ch": dict(ch=10 ** 6),
    "depth": dict(depth_multiple=1e6),
    "deep": dict(depth_multiple=10, backbone=[[-1, 50, "C3", [32]], *TINY["backbone"]]),
    "width": dict(width_multiple=1e6),
    "repeats": dict(backbone=[[-1, 10 ** 9, "Conv", [32, 3, 2]], *TINY["backbone"]]),
    "channels": dict(backbone=[[-1, 1, "Conv", [10 ** 7, 3, 2]], *TINY["backbone"]]),
    "linear": dict(backbone=[[-1, 1, "nn.Linear", [10 ** 6, 10 ** 6]], *TINY["backbone"]]),
    "upsample": dict(backbone=[[-1, 1, "nn.Upsample", [None, 10 ** 4]], *TINY["backbone"]]),
    # a few GB: would succeed on a big machine, so only the bounds (and the address-space cap below) stop them
    "linear_gb": dict(backbone=[[-1, 1, "nn.Linear", [30000, 30000]], *TINY["backbone"]]),
    "upsample_gb": dict(backbone=[[-1, 1, "nn.Upsample", [None, 40]], *TINY["backbone"]]),
    "anchors": dict(anchors=10 ** 9),
    "rows": dict(backbone=[[-1, 1, "nn.Identity", []]] * 5000),
}


@contextlib.contextmanager
def address_space_cap(extra: int = 1 << 30):
    """Make any allocation beyond ``extra`` more bytes of address space fail inside the block (RLIMIT_AS, Linux),
    so 'nothing big allocated' is checked in this process, not inferred from timings."""
    resource = pytest.importorskip("resource")
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("needs /proc/self/status (Linux)")
    vm_kb = int(next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmSize:")))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm_kb * 1024 + extra
    if hard != resource.RLIM_INFINITY and cap > hard:
        pytest.skip("address-space limit already lower than the cap")
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("key", list(BOMBS))
def test_size_bomb_messages_say_why(key, unchanged_modules):
    why = {"nc": "'nc' must be an int in 1..10000", "ch": "'ch' must be an int in 1..64",
           "depth": "'depth_multiple' must be a number in (0, 10]", "deep": "= 500 is more than 100",
           "width": "'width_multiple' must be a number in (0, 10]",
           "repeats": "'number' must be an int in 1..100", "channels": "more than the 8192 allowed",
           "linear": "parameters, more than", "upsample": "elements, more than",
           "linear_gb": "parameters, more than", "upsample_gb": "elements, more than", "anchors": "'anchors' must be",
           "rows": "more than the 1000"}[key]
    Model(tiny(), verbose=False)  # warm: lazily initialised torch state must not count against the cap
    d = tiny(**BOMBS[key])
    t = time.perf_counter()
    with address_space_cap(), pytest.raises(YamlError) as e:  # a bomb past the bounds fails 'can't allocate'
        Model(d, ch=d.get("ch", 3), verbose=False)
    assert time.perf_counter() - t < 2, "refused before any work"
    assert "crafted.yaml" in one_line(e) and why in str(e.value)


# -------------------------------------------------------------------------------- 7. wrong types, activations
@pytest.mark.parametrize("change,why", [
    (dict(nc="80"), "'nc' must be an int"), (dict(nc=[80]), "'nc' must be an int"), (dict(nc=-1), "'nc' must"),
    (dict(nc=True), "'nc' must be an int"), (dict(ch="3"), "'ch' must be an int"), (dict(ch=[3]), "'ch' must"),
    (dict(ch=-3), "'ch' must"), (dict(ch=False), "'ch' must"),
    (dict(depth_multiple="1"), "'depth_multiple' must be a number"), (dict(width_multiple=float("nan")), "'width"),
    (dict(activation="nn.SiLU("), "not valid syntax"), (dict(activation="os.system('x')"), "not a torch.nn activation"),
    (dict(activation="nn.Linear(10, 10)"), "not a torch.nn activation"),
    (dict(activation="nn.PReLU(10 ** 9)"), "non-literal argument"),
    (dict(activation="nn.PReLU(1000000000)"), "weights; at most 1024"),
    (dict(activation="nn.LeakyReLU(**{'a': 1})"), "non-literal argument"),
    (dict(activation="nn.LeakyReLU(0.1, 2, 3, 4)"), "TypeError"),
    (dict(activation="nn.SiLU" + "(" * 150), "not valid syntax"),
    (dict(backbone=[[-1, 1, "C" * 10 ** 6, []]]), "longer than 100 characters"),
    (dict(backbone=[[-1, 1, "Conv", ["[" * 5000 + "]" * 5000, 3]]]), "output channels must be a positive int"),
    (dict(backbone=[[-1, 1, "Conv", ["9" * 10000, 3]]]), "output channels must be a positive int"),
    (dict(activation="nn.LeakyReLU(" + "9" * 10000 + ")"), "longer than 200 characters"),
])
def test_wrong_types_and_bad_activations_give_one_line(tmp_path, change, why, unchanged_modules):
    f = write_yaml(tmp_path / "typed.yaml", {**TINY, **change})
    with pytest.raises(YamlError) as e:
        Model(f, verbose=False)
    assert one_line(e).startswith(("typed.yaml: ", "typed.yaml row ")) and why in str(e.value)


def test_activation_payloads_are_never_evaluated(tmp_path, unchanged_modules):
    marker = tmp_path / "marker"
    payloads = [f"nn.LeakyReLU(__import__('os').system('touch {marker}'))",
                f"nn.LeakyReLU(open('{marker}', 'w'))", f"nn.ReLU(inplace=open('{marker}', 'w'))",
                f"__import__('os').system('touch {marker}')", f"nn.SiLU() if open('{marker}', 'w') else 1"]
    for p in payloads:
        with pytest.raises(YamlError) as e:
            Model(tiny(activation=p), verbose=False)
        assert "crafted.yaml" in one_line(e)
    assert not marker.exists()
    m = Model(tiny(activation="nn.ReLU(inplace=True)"), verbose=False)
    acts = [x for x in m.modules() if isinstance(x, nn.ReLU)]
    assert acts and all(a.inplace for a in acts) and not any(isinstance(x, nn.SiLU) for x in m.modules())
