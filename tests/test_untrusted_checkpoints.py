"""Untrusted .pt files (issue 14, items 3 and 6-9): crafted files run nothing, change nothing in the process, allocate
nothing they merely claim and end in one short line; real YOLOv5 layouts (train.py's unstripped last.pt, the PyPI
yolov5 package's class paths) load and match their weights. Every crafted file is made here, byte by byte."""
from __future__ import annotations

import contextlib
import copy
import json
import pickle
import struct
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from models.experimental import attempt_load
from models.yolo import Model
from tests.test_checkpoint import seeded_tiny_model
from utils.checkpoint import FORMAT, CheckpointError, load_checkpoint, make_checkpoint, save_checkpoint
from utils.safe_unpickle import read_torch_zip

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- pickle opcodes, to write files torch never would
def G(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def U(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def I(n: int) -> bytes:  # an opcode helper, like G and U
    return b"J" + struct.pack("<i", n) if -2**31 <= n < 2**31 else b"\x8a\x08" + struct.pack("<q", n)


def T(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


PROTO, STOP, REDUCE, BUILD, NONE, EMPTY_DICT = b"\x80\x02", b".", b"R", b"b", b"N", b"}"
SETITEM, EMPTY_TUPLE, FALSE = b"s", b")", b"\x89"


def D(**kv: bytes) -> bytes:
    return EMPTY_DICT + b"".join(U(k) + v + SETITEM for k, v in kv.items())


def tensor(key: str, numel: int, offset: int, size: tuple, stride: tuple, kind: str = "FloatStorage") -> bytes:
    """_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict()) as torch.save writes it."""
    pid = T(U("storage"), G("torch", kind), U(key), U("cpu"), I(numel)) + b"Q"
    return G("torch._utils", "_rebuild_tensor_v2") + T(pid, I(offset), T(*map(I, size)), T(*map(I, stride)), FALSE,
                                                      G("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE) + REDUCE


def write_zip(path: Path, pkl: bytes, storages: dict | None = None, extra: dict | None = None) -> Path:
    """A torch.save-shaped zip: archive/data.pkl, archive/data/<key>, archive/byteorder."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for k, b in (storages or {}).items():
            z.writestr(f"archive/data/{k}", b)
        for k, b in (extra or {}).items():
            z.writestr(k, b)
    return path


# ---------------------------------------------------------------- what "the process is as it was" means
_WATCHED = ("pathlib", "collections", "copyreg", "_codecs", "pickle", "os", "shutil", "torch", "torch._utils",
            "torch.serialization", "torch._tensor", "torch.nn.modules.module", "numpy", "numpy._core.multiarray")


def snapshot() -> dict:
    """Identity of every attribute of the modules a crafted file could aim at (and of every class's and function's
    own attributes), plus numpy's builtin dtypes: any setattr/__dict__ update/__setstate__ from a file shows here."""
    snap = {}
    for name, mod in list(sys.modules.items()):
        if not isinstance(mod, types.ModuleType) or not (name in _WATCHED or name.startswith(("utils.", "models."))):
            continue
        for k, v in list(vars(mod).items()):
            snap[(name, k)] = id(v)
            if isinstance(v, type):
                snap[(name, k, "class")] = tuple(sorted((a, id(b)) for a, b in list(vars(v).items())))
            elif isinstance(v, types.FunctionType):
                snap[(name, k, "fn")] = (id(v.__code__), repr(v.__defaults__), repr(v.__kwdefaults__),
                                         tuple(sorted(v.__dict__)))
    snap["dtypes"] = tuple(np.dtype(c).str + repr(np.dtype(c).__reduce__())
                           for c in ["f8", "f4", "f2", "i8", "u1", "b1"])
    return snap


def assert_unchanged(before: dict) -> None:
    after = snapshot()
    changed = [k for k in before if after.get(k) != before[k]]
    added = [k for k in after if k not in before and k[0].startswith(("pathlib", "collections", "torch._utils"))]
    assert not changed and not added, f"process state changed: {changed[:5]} {added[:5]}"


def assert_one_line(e: pytest.ExceptionInfo, path: Path, *words: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg and len(msg) <= 200 + len(str(path)), msg
    assert str(path) in msg and "weights_only" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


@pytest.fixture(scope="module")
def tiny():
    return seeded_tiny_model().eval()


@pytest.fixture(scope="module")
def clean(tiny, tmp_path_factory):
    return save_checkpoint(make_checkpoint(tiny), tmp_path_factory.mktemp("clean") / "clean.pt")


def _out(model, x):
    with torch.no_grad():
        return model.eval()(x)[0]


# ---------------------------------------------------------------- item 3: BUILD, calls, containers, 'module' ids
MARKER = "MARKER_written_by_file"


def crafted_files(d: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words the refusal must contain). Each would change process state or run code if obeyed."""
    slot = lambda attrs: NONE + attrs + b"\x86" + BUILD  # None, {...}: setattr on the target
    p = {
        "setattr_path_class": (G("pathlib", "PosixPath") + slot(D(__truediv__=G("builtins", "set"))), "type"),
        "setattr_rebuild_fn": (G("torch._utils", "_rebuild_tensor_v2") + slot(D(__defaults__=T(I(7)))), "function"),
        "dict_ordereddict": (G("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + D(x=I(1)) + BUILD, "OrderedDict"),
        "build_record_class": (G("models.common", "Conv") + D(forward=NONE) + BUILD, "type"),
        "build_size_class": (G("torch", "Size") + slot(D(__len__=G("builtins", "set"))), "type"),
        "os_system": (G("os", "system") + T(U(f"touch {d / MARKER}")) + REDUCE, "refusing to load global 'os.system'"),
        "builtins_eval": (G("builtins", "eval") + T(U(f"open('{d / MARKER}','w')")) + REDUCE, "builtins.eval"),
        "getattr_chain": (G("builtins", "getattr") + T(G("pathlib", "Path"), U("write_text")) + REDUCE, "getattr"),
        # a record's state names 'append' -> pickle's APPEND would call whatever that state holds
        "append_to_record": (G("models.common", "Conv") + EMPTY_TUPLE + REDUCE + D(append=G("builtins", "set")) + BUILD
                             + U("x") + b"a", "APPEND"),
        "setitem_on_class": (G("collections", "OrderedDict") + U("k") + I(1) + SETITEM, "SETITEM"),
        "call_ndarray": (G("numpy", "ndarray") + T(T(I(1 << 20))) + REDUCE, "ndarray"),
        "object_dtype": (G("numpy", "dtype") + T(U("O8"), FALSE, b"\x88") + REDUCE, "plain number"),
        "codecs_other": (G("_codecs", "encode") + T(U("x"), U("rot13")) + REDUCE, "latin1"),
        "module_pid_in_zip": (D(model=T(U("module"), G("models.common", "Conv"), U("x.py"), U("src")) + b"Q"),
                              "'module'"),
        "extension_code": (b"\x82\x01", "extension"),
    }
    files = {k: (write_zip(d / f"{k}.pt", PROTO + v + STOP), w) for k, (v, w) in p.items()}
    files["torchscript"] = (write_zip(d / "ts.pt", PROTO + D() + STOP, extra={"archive/constants.pkl": b""}),
                            "TorchScript")
    legacy = d / "legacy.pt"  # torch's legacy format stores ('module', class, file, source) ids for nn.Modules
    torch.save({"model": nn.Linear(2, 2)}, legacy, _use_new_zipfile_serialization=False)
    files["legacy_module_id"] = (legacy, "legacy")
    return files


def test_crafted_build_and_calls_are_refused_and_change_nothing(tmp_path, clean, monkeypatch):
    monkeypatch.chdir(tmp_path)  # torch's legacy loader would write <class>.patch files here
    load_checkpoint(clean)  # warm lazy imports, so the snapshot compares steady states
    files = crafted_files(tmp_path)
    before = snapshot()
    for f, words in files.values():
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(f)
        assert_one_line(e, f, words)
    assert_unchanged(before)
    assert not list(tmp_path.rglob(MARKER)) and not list(tmp_path.rglob("*.patch"))


def test_numpy_dtype_state_only_touches_a_private_copy(tmp_path):
    # BUILD with a big-endian state on np.dtype('f8', copy=False) would flip numpy's one float64 descriptor
    state = T(I(3), U(">"), NONE, NONE, NONE, I(-1), I(-1), I(0))
    f = write_zip(tmp_path / "dtype.pt", PROTO + D(d=G("numpy", "dtype") + T(U("f8"), FALSE, FALSE) + REDUCE + state
                                                    + BUILD) + STOP)
    before = snapshot()
    assert read_torch_zip(f)["d"].str == ">f8"
    assert_unchanged(before)
    assert np.dtype("f8").str == "<f8" and np.ones(1).dtype.str == "<f8"


def test_clean_load_after_crafted_ones_equals_a_fresh_process(tmp_path, clean, fresh_process):
    for f, _ in crafted_files(tmp_path).values():
        with contextlib.suppress(CheckpointError):
            load_checkpoint(f)
    fresh = torch.load(fresh_process["dir"] / "res.pt", weights_only=True)
    m = attempt_load(clean)
    sd = m.state_dict()
    assert sd.keys() == fresh["sd"].keys() and all(torch.equal(sd[k], fresh["sd"][k]) for k in sd)
    # identical weights, kernels and thread count (1, set by conftest and the probe): bit-identical outputs
    assert torch.equal(_out(m, fresh["x"]), fresh["out"])


# ---------------------------------------------------------------- real YOLOv5 layouts
@contextlib.contextmanager
def yolov5_class_paths(prefix: str):
    """Throwaway modules <prefix>models.yolo / <prefix>models.common in sys.modules (our own models.yolo and
    models.common are set aside meanwhile), so that pickle writes YOLOv5's class paths; all restored afterwards."""
    names = [f"{prefix}models.yolo", f"{prefix}models.common"]
    parents = ["yolov5", "yolov5.models"] if prefix else []
    saved = {n: sys.modules.get(n) for n in names + parents}
    try:
        for n in names + parents:
            sys.modules[n] = types.ModuleType(n)
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


class _V5Pickler(pickle.Pickler):
    """Writes each of our modules as a record of YOLOv5's class path (DetectionModel and Detect in models.yolo, the
    blocks in models.common) + BUILD(__dict__). YOLOv5's files use NEWOBJ, which pickle will not write for a stand-in
    class; REDUCE without arguments makes the same record (the 'ours' variant is pickled natively, with NEWOBJ)."""
    prefix = ""

    def reducer_override(self, obj):
        name = type(obj).__name__
        if isinstance(obj, nn.Module) and type(obj).__module__.startswith("models."):
            mod = sys.modules[f"{self.prefix}models.{'yolo' if name in ('DetectionModel', 'Detect') else 'common'}"]
            if not hasattr(mod, name):
                setattr(mod, name, type(name, (), {"__module__": mod.__name__, "__qualname__": name}))
            return getattr(mod, name), (), dict(obj.__dict__)
        return NotImplemented


def yolov5_last_pt(model: nn.Module, path: Path, layout: str) -> dict:
    """train.py's unstripped last.pt: model and ema module objects (fp16), SGD state with numpy learning rates,
    best_fitness as numpy, the opt dict; torch.save's default pickle protocol 2 (bytes via _codecs.encode)."""
    ema, raw = copy.deepcopy(model).half(), copy.deepcopy(model)
    with torch.no_grad():
        for p in raw.parameters():
            p.add_(0.01)  # 'model' differs from 'ema': the loader must take the EMA
    g = [[], [], []]
    for name, p in raw.named_parameters():
        g[0 if name.endswith("weight") and p.ndim > 1 else 1 if name.endswith("bias") else 2].append(p)
    opt = torch.optim.SGD(g[2], lr=0.01, momentum=0.937, nesterov=True)
    opt.add_param_group({"params": g[0], "weight_decay": 5e-4})
    opt.add_param_group({"params": g[1], "weight_decay": 0.0})
    raw.float()(torch.rand(1, 3, 32, 32))[0].sum().backward()
    opt.step()
    for i, x in enumerate(opt.param_groups):  # YOLOv5's warmup writes numpy floats here
        x["lr"] = np.interp(3, [0, 10], [0.1 if i == 2 else 0.0, 0.01])
        x["momentum"] = np.interp(3, [0, 10], [0.8, 0.937])
    best = np.float64(0.4321) if layout == "yolov5." else np.array([0.4321])  # fitness() gives a (1,) array
    ckpt = {"epoch": 2, "best_fitness": best, "model": raw.half(), "ema": ema, "updates": 36,
            "optimizer": opt.state_dict(), "opt": {"weights": "yolov5n.pt", "cfg": Path("models/yolov5n.yaml"),
                                                    "hyp": {"lr0": 0.01, "anchor_t": 4.0}, "epochs": 3,
                                                    "imgsz": 640, "noval": False, "evolve": None,
                                                    "save_dir": "runs/train/exp", "label_smoothing": 0.0},
            "git": {"remote": "https://example.invalid/yolov5", "branch": "master", "commit": "abc123"},
            "date": "2024-01-02T03:04:05"}
    if layout == "ours":  # our own classes pickled as they are: models.yolo.DetectionModel, models.blocks...
        torch.save(ckpt, path)
    else:
        pickler = type("P", (_V5Pickler,), {"prefix": layout.replace("models.", "")})
        with yolov5_class_paths(pickler.prefix):
            torch.save(ckpt, path, pickle_module=types.SimpleNamespace(Pickler=pickler, __name__="v5_pickle"))
    return ckpt


@pytest.mark.parametrize("layout", ["models.", "yolov5.models.", "ours"])
def test_unstripped_yolov5_checkpoint_loads_and_matches(tmp_path, tiny, layout):
    path = tmp_path / "last.pt"
    src = yolov5_last_pt(tiny, path, layout)
    with zipfile.ZipFile(path) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"_codecs\nencode" in pkl  # protocol 2: bytes (numpy data) written as _codecs.encode
    if layout != "ours":
        assert f"c{layout}common\nC3\n".encode() in pkl and f"c{layout}yolo\nDetectionModel\n".encode() in pkl
    before = snapshot()
    info = load_checkpoint(path)
    assert_unchanged(before)
    ck = info["ckpt"]
    assert info["source"] == "yolov5" and info["names"] == tiny.names
    assert np.array_equal(ck["best_fitness"], src["best_fitness"]) and ck["epoch"] == 2
    pg = ck["optimizer"]["param_groups"]
    assert [float(g["lr"]) for g in pg] == [float(g["lr"]) for g in src["optimizer"]["param_groups"]]
    st = src["optimizer"]["state"]
    assert all(torch.equal(ck["optimizer"]["state"][k]["momentum_buffer"], st[k]["momentum_buffer"]) for k in st)
    assert ck["opt"]["cfg"] == Path("models/yolov5n.yaml") and ck["opt"]["hyp"]["anchor_t"] == 4.0
    model = attempt_load(path)
    ref = Model(tiny.yaml, verbose=False)
    ref.load_state_dict({k: v.float() for k, v in src["ema"].state_dict().items()})  # the file's fp16 EMA weights
    x = torch.rand(1, 3, 64, 96)
    # same fp16-rounded weights; only BN folding (fused vs unfused float32) differs: ~1e-6 relative per layer on
    # outputs up to ~100 px
    assert torch.allclose(_out(model, x), _out(ref, x), atol=1e-3, rtol=1e-4)


# ---------------------------------------------------------------- item 6: sizes claimed by a few bytes
_PROBE = """
import json, resource, sys, time, torch; sys.path.insert(0, {root!r}); torch.set_num_threads(1)
from models.experimental import attempt_load
from utils.checkpoint import CheckpointError, load_checkpoint
m = attempt_load({clean!r}); torch.manual_seed(1); x = torch.rand(1, 3, 64, 96)
with torch.no_grad(): out = m(x)[0]
torch.save({{"sd": m.state_dict(), "out": out, "x": x}}, {res!r})
rows, peak0 = [], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for f in {files!r}:
    t = time.time()
    try:
        load_checkpoint(f); msg = "LOADED"
    except CheckpointError as e:
        msg = str(e)
    rows.append([msg, time.time() - t])
grow = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak0) / 1024
print(json.dumps({{"rows": rows, "grow_mb": grow}}))
"""


@pytest.fixture(scope="module")
def fresh_process(clean, tmp_path_factory) -> dict:
    """One fresh interpreter: loads the clean checkpoint (outputs to compare with), then every bomb file while its
    peak RSS is watched (ru_maxrss only grows, so its rise is what the bombs made it allocate)."""
    d = tmp_path_factory.mktemp("fresh")
    bombs = bomb_files(d)
    code = _PROBE.format(root=str(ROOT), clean=str(clean), res=str(d / "res.pt"),
                         files=[str(f) for f, _ in bombs.values()])
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=300, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]), dir=d, bombs=bombs)


def bomb_files(d: Path) -> dict[str, tuple[Path, str]]:
    four = struct.pack("<f", 1.0)
    sd = lambda t: PROTO + D(model=D(**{"model.0.conv.weight": t})) + STOP
    files = {
        # 2**28 floats (1 GiB) from one: stride 0
        "zero_stride": (sd(tensor("0", 1, 0, (1 << 28,), (0,))), {"0": four}, "claims 268435456 elements"),
        "past_storage": (sd(tensor("0", 1, 0, (1 << 14, 1 << 14), (1 << 14, 1))), {"0": four}, "reaches past"),
        "storage_claim": (sd(tensor("0", 1 << 28, 0, (1 << 28,), (1,))), {"0": four}, "file holds 4"),
        "array_state": (PROTO + D(best=G("numpy._core.multiarray", "_reconstruct") + T(G("numpy", "ndarray"),
                         T(I(0)), G("_codecs", "encode") + T(U("b"), U("latin1")) + REDUCE) + REDUCE
                         + T(I(1), T(I(1 << 28)), G("numpy", "dtype") + T(U("f8"), FALSE, b"\x88") + REDUCE,
                             FALSE, G("_codecs", "encode") + T(U("\x00" * 8), U("latin1")) + REDUCE) + BUILD)
                        + STOP, {}, "does not match"),
        "array_template": (PROTO + D(best=G("numpy.core.multiarray", "_reconstruct") + T(G("numpy", "ndarray"),
                           T(I(1 << 28)), G("_codecs", "encode") + T(U("b"), U("latin1")) + REDUCE) + REDUCE)
                           + STOP, {}, "template"),
    }
    out = {k: (write_zip(d / f"{k}.pt", p, s), w) for k, (p, s, w) in files.items()}
    z = d / "deflated.pt"  # 64 MiB of zeros in a few KiB: a compressed record
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", sd(tensor("0", 1 << 24, 0, (1 << 24,), (1,))))
        zf.writestr("archive/data/0", bytes(1 << 26))
    out["deflated"] = (z, "claim more bytes than the file holds")
    return out


def test_resource_bombs_refused_before_allocation(fresh_process):
    before = snapshot()
    for f, words in fresh_process["bombs"].values():  # in this process: one line, the cause, the file
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(f)
        assert_one_line(e, f, words)
    assert_unchanged(before)
    r = fresh_process
    assert all(msg != "LOADED" for msg, _ in r["rows"]), r["rows"]
    # each claims >= 64 MiB; a refusal before allocation needs a few MiB (the deflated record is never inflated)
    assert r["grow_mb"] < 32, r["grow_mb"]
    assert max(t for _, t in r["rows"]) < 10, r["rows"]  # refused at once, not after reading/allocating gigabytes


# ---------------------------------------------------------------- item 7: malformed layouts, one line each
class _Cyc:  # a module record whose child is itself, pickled under a YOLOv5 class path
    pass


def test_malformed_layouts_give_one_line(tmp_path, tiny):
    yaml = dict(tiny.yaml)
    sd = {k: v.clone() for k, v in tiny.state_dict().items()}
    cases = {
        "ema_tensor": ({"format": FORMAT, "yaml": yaml, "model": sd, "ema": torch.zeros(3)}, "'ema' is a Tensor"),
        "no_model": ({"format": FORMAT, "yaml": yaml, "ema": None}, "no 'model'"),
        "str_values": ({"format": FORMAT, "yaml": yaml, "model": {"model.0.conv.weight": "x"}}, "is a str"),
        "yaml_list": ({"format": FORMAT, "yaml": [1], "model": sd}, "not a dict"),
        "v5_model_tensor": ({"model": torch.zeros(2), "ema": None}, "not module records"),
        "bad_names": ({"format": FORMAT, "yaml": yaml, "model": sd, "names": 3}, "class names"),
    }
    for name, (obj, _) in cases.items():
        torch.save(obj, tmp_path / f"{name}.pt")
    before = snapshot()  # after torch.save: its first call in a process adds to torch.Tensor's class dict
    for name, (_, words) in cases.items():
        f = tmp_path / f"{name}.pt"
        with pytest.raises(CheckpointError) as e:
            attempt_load(f)
        assert_one_line(e, f, words)
    # cyclic module records: DetectionModel._modules['model'] is C3 whose _modules['0'] is the same C3
    conv = G("models.common", "C3") + EMPTY_TUPLE + b"\x81" + b"q\x01"  # NEWOBJ, memo 1
    state = D(_parameters=EMPTY_DICT, _buffers=EMPTY_DICT, _modules=D(**{"0": b"h\x01"})) + BUILD
    top = G("models.yolo", "DetectionModel") + EMPTY_TUPLE + b"\x81" + D(yaml=D(nc=I(3)),
                                                                           _modules=D(model=conv + state))
    f = write_zip(tmp_path / "cyclic.pt", PROTO + D(model=top + BUILD) + STOP)
    with pytest.raises(CheckpointError) as e:
        attempt_load(f)
    assert_one_line(e, f, "cycle")
    # a record graph that is no cycle but doubles at every level (2**40 paths) is bounded, not walked
    new = G("models.common", "C3") + EMPTY_TUPLE + b"\x81"  # NEWOBJ of a record
    chain = new + D(_modules=EMPTY_DICT) + BUILD + b"q\x000"  # memo 0, POP
    chain += (new + D(_modules=D(a=b"h\x00", b=b"h\x00")) + BUILD + b"q\x000") * 40 + b"h\x00"
    top = G("models.yolo", "DetectionModel") + EMPTY_TUPLE + b"\x81" + D(yaml=D(nc=I(3)), _modules=D(model=chain))
    f = write_zip(tmp_path / "diamond.pt", PROTO + D(model=top + BUILD) + STOP)
    with pytest.raises(CheckpointError) as e:
        attempt_load(f)
    assert_one_line(e, f, "module records")
    # a chain 150 records deep (each walk step would copy its ancestors: quadratic) stops at a depth bound
    chain = new + D(_modules=EMPTY_DICT) + BUILD + b"q\x000"
    chain += (new + D(_modules=D(a=b"h\x00")) + BUILD + b"q\x000") * 150 + b"h\x00"
    top = G("models.yolo", "DetectionModel") + EMPTY_TUPLE + b"\x81" + D(yaml=D(nc=I(3)), _modules=D(model=chain))
    f = write_zip(tmp_path / "deep.pt", PROTO + D(model=top + BUILD) + STOP)
    with pytest.raises(CheckpointError) as e:
        attempt_load(f)
    assert_one_line(e, f, "nested more than")
    assert_unchanged(before)


def test_cli_prints_one_line_for_a_crafted_file(tmp_path, log_lines):
    import cv2

    import detect
    import export
    f = write_zip(tmp_path / "evil.pt", PROTO + D(model=G("os", "system") + T(U(f"touch {tmp_path / MARKER}"))
                                                   + REDUCE) + STOP)
    cv2.imwrite(str(tmp_path / "im.jpg"), np.zeros((32, 32, 3), np.uint8))
    assert detect.main(detect.parse_opt(["--weights", str(f), "--source", str(tmp_path / "im.jpg"),
                                         "--project", str(tmp_path / "runs")])) == 1
    assert log_lines[-1].startswith("ERROR") and "refusing" in log_lines[-1] and "\n" not in log_lines[-1]
    assert export.main(export.parse_opt(["--weights", str(f), "--include", "onnx"])) == 1
    assert "refusing" in log_lines[-1] and "\n" not in log_lines[-1]
    assert export.main(export.parse_opt(["--weights", str(tmp_path), "--include", "onnx"])) == 1
    assert "is a directory" in log_lines[-1]
    assert not list(tmp_path.rglob(MARKER))


# ---------------------------------------------------------------- item 8: messages that do not mislead
def test_truncated_directory_and_wrong_shape_messages(tmp_path, tiny, clean):
    before = snapshot()
    good = clean.read_bytes()
    for frac in (0.5, 0.98):  # the middle of a record, and only the zip directory missing
        f = tmp_path / f"trunc{frac}.pt"
        f.write_bytes(good[: int(len(good) * frac)])
        with pytest.raises(CheckpointError) as e:
            attempt_load(f)
        msg = assert_one_line(e, f, "truncated or corrupt")
        assert len(msg) - len(str(f)) <= 150
    bad = bytearray(good)
    with zipfile.ZipFile(clean) as z:  # a flipped byte inside a weight record: the CRC catches it
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 64)
    n_name, n_extra = struct.unpack("<HH", good[info.header_offset + 26: info.header_offset + 30])
    bad[info.header_offset + 30 + n_name + n_extra + 8] ^= 0xFF  # local header, then the record's bytes
    (tmp_path / "flip.pt").write_bytes(bytes(bad))
    with pytest.raises(CheckpointError) as e:
        attempt_load(tmp_path / "flip.pt")
    assert_one_line(e, tmp_path / "flip.pt", "CRC")
    with pytest.raises(CheckpointError) as e:
        attempt_load(tmp_path)
    assert "is a directory" in str(e.value) and "not found" not in str(e.value)
    ck = make_checkpoint(tiny)
    ck["yaml"] = dict(ck["yaml"], nc=4)  # head rows: 3 * (5 + 4) = 27 in the model, 24 in the file
    f = save_checkpoint(ck, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError) as e:
        attempt_load(f)
    assert_one_line(e, f, "'model.24.m.0.weight'", "(24, 64, 1, 1)", "(27, 64, 1, 1)")
    assert_unchanged(before)


# ---------------------------------------------------------------- item 9: NaN/Inf weights
def test_non_finite_weights_warn_with_count(tmp_path, tiny, log_lines):
    ck = make_checkpoint(tiny)
    w = ck["model"]["model.0.conv.weight"].view(-1)
    w[:5], w[5:7] = float("nan"), float("inf")
    f = save_checkpoint(ck, tmp_path / "nan.pt")
    attempt_load(f)
    warn = [m for m in log_lines if "NaN/Inf" in m]
    assert len(warn) == 1 and " 7 " in warn[0] and str(f) in warn[0]
    log_lines.clear()
    attempt_load(save_checkpoint(make_checkpoint(tiny), tmp_path / "ok.pt"))
    assert not [m for m in log_lines if "NaN/Inf" in m]


def test_reader_matches_torch_on_the_reference_file(reference):
    from tests.conftest import REFERENCE
    ours = read_torch_zip(REFERENCE)
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours["state_dict"][k], v) for k, v in reference["state_dict"].items())
    assert torch.equal(ours["eval_output"], reference["eval_output"]) and ours["hyp"] == reference["hyp"]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_values_read_at_every_pickle_protocol(tmp_path, protocol):
    v = {"f": np.float64(0.25), "i": np.int64(-3), "a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": b"\x00\xff",
         "p": Path("runs/x"), "s": {1, 2}, "fs": frozenset([3]), "t": (1, 2.5, None, True), "od": {"k": [1, "x"]},
         "w": torch.arange(6.0).view(2, 3).t(), "h": torch.ones(3, dtype=torch.float16), "sz": torch.Size([2, 3]),
         "u16": torch.arange(4).to(torch.uint16)}  # written as _rebuild_tensor_v3 over an untyped storage
    torch.save(v, tmp_path / "v.pt", pickle_protocol=protocol)
    r = read_torch_zip(tmp_path / "v.pt")
    assert r.keys() == v.keys() and r["f"] == v["f"] and type(r["f"]) is np.float64 and r["i"] == -3
    assert np.array_equal(r["a"], v["a"]) and r["a"].dtype == np.float32 and r["b"] == v["b"] and r["p"] == v["p"]
    assert (r["s"], r["fs"], r["t"], r["od"], r["sz"]) == (v["s"], v["fs"], v["t"], v["od"], v["sz"])
    assert torch.equal(r["w"], v["w"]) and r["w"].stride() == (1, 3) and r["h"].dtype == torch.float16
    assert r["u16"].dtype == torch.uint16 and r["u16"].tolist() == [0, 1, 2, 3]


# ---------------------------------------------------------------- ImageNet state_dict files (zip and legacy stream)
def _legacy_file(path: Path, main: bytes) -> Path:
    """torch's pre-zip stream: magic, protocol, system info, the object, then the storage key list (empty)."""
    head = (pickle.dumps(0x1950A86A20F9469CFC6C, 2) + pickle.dumps(1001, 2)
            + pickle.dumps({"protocol_version": 1001, "little_endian": True}, 2))
    path.write_bytes(head + main + pickle.dumps([], 2))
    return path


@pytest.mark.parametrize("zip_format", [True, False])
def test_real_state_dict_files_load_with_their_metadata(tmp_path, zip_format):
    """nn.Module.state_dict() files (OrderedDicts carrying _metadata), in the zip format and in the legacy stream
    many published ImageNet files use, come back equal, with the version records load_state_dict reads."""
    import torchvision

    from utils.safe_unpickle import read_torch_file
    m = torchvision.models.shufflenet_v2_x0_5(weights=None)
    f = tmp_path / "w.pth"
    torch.save(m.state_dict(), f, _use_new_zipfile_serialization=zip_format)
    sd = read_torch_file(f)
    ref = m.state_dict()
    assert list(sd) == list(ref) and all(torch.equal(sd[k], ref[k]) and sd[k].dtype == ref[k].dtype for k in ref)
    assert sd._metadata == ref._metadata
    torchvision.models.shufflenet_v2_x0_5(weights=None).load_state_dict(sd)


def test_state_dict_and_legacy_records_are_checked(tmp_path, clean):
    """An OrderedDict may receive only plain _metadata; a legacy storage may not claim more bytes than the file
    has left (refused before anything is allocated); 'module' ids (pickled source code) are refused."""
    from utils.safe_unpickle import read_torch_file
    before = snapshot()
    od = G("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
    cases = {
        "other_attr": (write_zip(tmp_path / "a.pt", PROTO + od + D(update=I(1)) + BUILD + STOP), "_metadata"),
        "bad_meta": (write_zip(tmp_path / "b.pt", PROTO + od + D(_metadata=D(x=U("v"))) + BUILD + STOP),
                     "_metadata"),
        "huge_claim": (_legacy_file(tmp_path / "c.pt", PROTO + T(U("storage"), G("torch", "FloatStorage"), U("0"),
                                                                  U("cpu"), I(10 ** 12), NONE) + b"Q" + STOP),
                       "claims"),
        "module_id": (_legacy_file(tmp_path / "d.pt", PROTO + T(U("module"), U("x"), U("src")) + b"Q" + STOP),
                      "module"),
    }
    for path, word in cases.values():
        with pytest.raises(pickle.UnpicklingError, match=word):
            read_torch_file(path)
    assert_unchanged(before)
