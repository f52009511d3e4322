"""Data-parallel CPU extraction (ExtractConfig.processes > 1): the same feature set as one process, every bad input
reported, a dead worker loses nothing that a rerun does not redo."""

from __future__ import annotations

import os
import pickle
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")

from causalclip import open_feature_set  # noqa: E402
from causalclip.backbones.base import Backbone, uncompiled  # noqa: E402
from causalclip.backbones.registry import load_backbone  # noqa: E402
from causalclip.cli.main import main  # noqa: E402
from causalclip.features.cpu_pool import default_processes  # noqa: E402
from causalclip.features.extract import extract  # noqa: E402
from causalclip.features.job import ExtractConfig, ExtractError  # noqa: E402
from causalclip.images.transforms import Preprocessing  # noqa: E402


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """30 images of assorted sizes plus three unusable files, in two classes."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    rows = []
    for label, cls in ((0, "real"), (1, "fake")):
        (root / cls).mkdir()
        for i in range(15):
            w, h = (int(v) for v in rng.integers(120, 320, 2))
            name = f"{cls}/{i:03d}.{'png' if i % 2 else 'jpg'}"
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
            rows.append((name, label, "gen"))
    (root / "fake" / "empty.png").write_bytes(b"")
    (root / "fake" / "text.jpg").write_bytes(b"not an image")
    (root / "real" / "cut.png").write_bytes((root / "real" / "001.png").read_bytes()[:200])
    rows += [("fake/empty.png", 1, "gen"), ("fake/text.jpg", 1, "gen"), ("real/cut.png", 0, "gen")]
    samples = pd.DataFrame(rows, columns=["path", "label", "generator"]).sample(frac=1.0, random_state=1)
    return root, samples.reset_index(drop=True)


def _run(bb, root, samples, out, processes, **cfg):
    return extract(
        samples,
        root=root,
        out=out,
        backbone=bb,
        config=ExtractConfig(batch_size=3, shard_size=7, storage_dtype="float32", processes=processes, **cfg),
        progress=False,
    )


def _same_sets(a, b):
    fa, fb = open_feature_set(a), open_feature_set(b)
    assert list(fa.paths) == list(fb.paths)
    assert np.array_equal(fa.labels, fb.labels)
    np.testing.assert_allclose(fa.take(np.arange(len(fa))), fb.take(np.arange(len(fb))), rtol=1e-5, atol=1e-6)
    ea, eb = pd.read_csv(a / "errors.csv"), pd.read_csv(b / "errors.csv")
    pd.testing.assert_frame_equal(ea, eb)


def test_two_processes_give_the_single_process_set(tiny_clip, tree, tmp_path):
    root, samples = tree
    bb = load_backbone(str(tiny_clip), precision="fp32")
    one = _run(bb, root, samples, tmp_path / "one", 1, workers=0)
    two = _run(bb, root, samples, tmp_path / "two", 2)
    assert (one.n_ok, two.n_ok) == (30, 30)
    _same_sets(tmp_path / "one", tmp_path / "two")
    reasons = pd.read_csv(tmp_path / "two" / "errors.csv").set_index("path")["reason"]
    assert set(reasons.index) == {"fake/empty.png", "fake/text.jpg", "real/cut.png"}
    assert "empty" in reasons["fake/empty.png"] or "zero" in reasons["fake/empty.png"]
    # the features are the model's, not an artefact of the pool: compare with a direct forward of one image
    fs = open_feature_set(tmp_path / "two")
    path = fs.paths[4]
    from causalclip.images.decode import load_rgb

    with torch.inference_mode():
        ref = bb(torch.from_numpy(bb.preprocessing(load_rgb(root / path)))[None]).numpy()[0]
    np.testing.assert_allclose(fs.take([4])[0], ref, rtol=1e-5, atol=1e-6)


class _Flaky(Backbone):
    """Crashes its process (os._exit), or raises, on the batch holding a black image while ``flag`` exists
    (mode "slow": sleeps 0.5 s on every batch instead); else a fixed linear map of the mean colour. Defined at
    module level so that worker processes can unpickle it."""

    def __init__(self, flag: str, mode: str = "exit") -> None:
        super().__init__()
        self.flag, self.mode = flag, mode
        self.dim = 3
        self.preprocessing = Preprocessing(mode="crop", size=32)
        self.lin = torch.nn.Linear(3, 3)
        with torch.no_grad():  # the same map in every process that builds one
            self.lin.weight.copy_(torch.arange(9.0).view(3, 3) / 10 - 0.3)
            self.lin.bias.fill_(0.1)

    def describe(self):
        return {"name": "flaky-test-backbone", "dim": 3}

    def forward(self, pixels):
        if self.mode == "slow" and os.path.exists(self.flag):
            time.sleep(0.5)
        elif os.path.exists(self.flag) and (pixels.flatten(2).std(dim=2) < 1e-6).all(dim=1).any():
            if self.mode == "exit":
                os._exit(7)
            raise RuntimeError("forward failed on purpose")
        return self.lin(pixels.mean(dim=(2, 3)))


@pytest.fixture()
def flat_tree(tmp_path):
    root = tmp_path / "flat"
    rng = np.random.default_rng(2)
    rows = []
    for i in range(40):
        arr = np.zeros((40, 40, 3), np.uint8) if i == 30 else rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        (root / "x").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / "x" / f"{i:02d}.png")
        rows.append((f"x/{i:02d}.png", i % 2, "g"))
    return root, pd.DataFrame(rows, columns=["path", "label", "generator"])


def test_a_dead_worker_is_an_error_and_a_rerun_completes_the_set(flat_tree, tmp_path):
    root, samples = flat_tree
    flag = tmp_path / "crash"
    flag.touch()
    bb = _Flaky(str(flag))
    out = tmp_path / "out"
    with pytest.raises(ExtractError, match=r"died \(exit code 7\).*\n.*run the same command again"):
        _run(bb, root, samples, out, 2)
    done = sorted(p.name for p in (out / "parts").glob("shard-*.json"))
    assert "shard-00004.json" not in done  # rows 28..34 hold the black image (row 30)
    assert not (out / "meta.json").exists()
    flag.unlink()
    res = _run(bb, root, samples, out, 2)
    redone = 40 - sum(min(7, 40 - 7 * int(name[6:11])) for name in done)
    assert res.n_ok == 40 and res.n_extracted_now == redone  # exactly the shards that were lost
    _run(bb, root, samples, tmp_path / "clean", 1, workers=0)
    _same_sets(out, tmp_path / "clean")


def test_an_exception_in_a_worker_is_reported_with_its_traceback(flat_tree, tmp_path):
    root, samples = flat_tree
    flag = tmp_path / "crash"
    flag.touch()
    with pytest.raises(ExtractError, match="forward failed on purpose"):
        _run(_Flaky(str(flag), mode="raise"), root, samples, tmp_path / "out", 2)


def test_clip_backbone_pickles_with_its_cls_only_forward(tiny_clip):
    bb = load_backbone(str(tiny_clip), precision="fp32")
    copy = pickle.loads(pickle.dumps(bb))
    assert copy.model._pooled is not None  # the exact CLS-only last layer is rebuilt, not dropped
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(bb(x), copy(x))
    assert copy.describe() == bb.describe()


def test_uncompiled_unwraps_without_touching_the_original(tiny_clip):
    bb = load_backbone(str(tiny_clip), precision="fp32", compile=True)
    plain, was = uncompiled(bb)
    assert was and plain is not bb
    assert plain.model is bb.model._orig_mod
    assert hasattr(bb.model, "_orig_mod")  # still compiled
    pickle.dumps(plain)
    same, was = uncompiled(plain)
    assert same is plain and not was


def test_processes_option_is_checked(tiny_clip, tree, tmp_path):
    root, samples = tree
    bb = load_backbone(str(tiny_clip), precision="fp32")
    with pytest.raises(ExtractError, match="processes must be"):
        _run(bb, root, samples, tmp_path / "o", 0)
    with pytest.raises(SystemExit):
        main(["extract", str(root), "--layout", "folders", "--out", str(tmp_path / "o"), "--processes", "many"])
    assert default_processes("cuda") == 1
    assert 1 <= default_processes("cpu") <= 4


def test_cli_extract_with_two_processes(tiny_clip, tree, tmp_path, capsys):
    root, samples = tree
    rc = main(
        [
            "extract", str(root), "--layout", "folders", "--backbone", str(tiny_clip), "--precision", "fp32",
            "--processes", "2", "--out", str(tmp_path / "cli"), "-q",
        ]
    )  # fmt: skip
    assert rc == 1  # three unusable inputs
    assert "30 of 33 images extracted" in capsys.readouterr().out
    fs = open_feature_set(tmp_path / "cli")
    assert (len(fs), fs.dim) == (30, 16)


def test_padding_to_a_fixed_batch_does_not_change_the_features(tiny_clip):
    from causalclip.features.cpu_pool import forward_fixed

    bb = load_backbone(str(tiny_clip), precision="fp32")
    x = torch.randn(3, 3, 224, 224)
    with torch.inference_mode():
        padded = forward_fixed(bb, x, 8)
        plain = bb(x)
    assert padded.shape == (3, 16)
    torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-6)
    assert forward_fixed(bb, x, None).shape == (3, 16)


def test_compiled_workers_give_the_eager_set(tiny_clip, tree, tmp_path):
    """--compile with worker processes: each compiles its own copy, padding short batches to one shape."""
    root, samples = tree
    eager = load_backbone(str(tiny_clip), precision="fp32")
    _run(eager, root, samples, tmp_path / "eager", 1, workers=0)
    compiled = load_backbone(str(tiny_clip), precision="fp32", compile=True)
    res = _run(compiled, root, samples, tmp_path / "compiled", 2)
    assert res.n_ok == 30 and res.startup_seconds <= res.seconds
    _same_sets(tmp_path / "eager", tmp_path / "compiled")


KILL_SCRIPT = """
import sys, pandas as pd
sys.path.insert(0, sys.argv[5])
from test_cpu_pool import _Flaky
from causalclip.features.extract import extract
from causalclip.features.job import ExtractConfig
if __name__ == "__main__":
    samples = pd.read_parquet(sys.argv[3])
    extract(samples, root=sys.argv[1], out=sys.argv[2], backbone=_Flaky(sys.argv[4], mode="slow"),
            config=ExtractConfig(batch_size=2, shard_size=4, processes=2), progress=False)
"""


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_killing_the_main_process_ends_the_workers_and_a_rerun_completes(tree, tmp_path):
    import signal
    import subprocess
    import sys

    root, samples = tree
    big = pd.concat([samples] * 6, ignore_index=True)
    big["generator"] = np.repeat([f"g{i}" for i in range(6)], len(samples))
    big.to_parquet(tmp_path / "plan.parquet")
    flag = tmp_path / "slow"
    flag.touch()  # 0.5 s per batch: the 99 batches would keep two workers busy for ~25 s after the kill
    out = tmp_path / "killed"
    here = os.path.dirname(os.path.abspath(__file__))
    script = [sys.executable, "-c", KILL_SCRIPT, str(root), str(out), str(tmp_path / "plan.parquet"), str(flag), here]
    proc = subprocess.Popen(script)
    deadline, workers = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None:
        done = list((out / "parts").glob("shard-*.json")) if (out / "parts").exists() else []
        if len(done) >= 2:
            workers = _children(proc.pid)
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = time.time()
    assert not (out / "meta.json").exists(), "the job finished before it could be interrupted"
    assert len(workers) >= 2  # the two workers (and the resource tracker)
    while time.time() < killed_at + 8 and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "worker processes went on after the main process was killed"
    flag.unlink()
    bb = _Flaky(str(flag), mode="slow")
    cfg = ExtractConfig(batch_size=2, shard_size=4, processes=2)
    res = extract(big, root=root, out=out, backbone=bb, config=cfg, progress=False)
    assert 0 < res.n_extracted_now < len(big)
    extract(big, root=root, out=tmp_path / "clean", backbone=bb, config=ExtractConfig(workers=0), progress=False)
    _same_sets(out, tmp_path / "clean")


class _DiesMidAnswer(Backbone):
    """Large features (a 3.2 MB answer per batch of two); on its second batch the process exits 0.3 s after the
    forward pass, while it is still sending that answer to a main process that is not reading."""

    def __init__(self) -> None:
        super().__init__()
        self.dim, self.calls = 400_000, 0
        self.preprocessing = Preprocessing(mode="crop", size=32)

    def describe(self):
        return {"name": "dies-mid-answer", "dim": self.dim}

    def forward(self, pixels):
        self.calls += 1
        if self.calls == 2:
            threading.Thread(target=lambda: (time.sleep(0.3), os._exit(7)), daemon=True).start()
        return pixels.mean(dim=(1, 2, 3))[:, None].repeat(1, self.dim)


class _ConstantImages:
    """decode(row, path) for cpu_pool_batches without image files: a constant image per row, each decode logged
    to ``log``; unpickling it (in a worker, while that starts) writes the worker's pid to ``log``.pid and takes
    ``delay`` seconds."""

    def __init__(self, log: str, delay: float = 0.0) -> None:
        self.log, self.delay = log, delay

    def __setstate__(self, state):
        self.__dict__.update(state)
        with open(self.log + ".pid", "w") as f:
            f.write(str(os.getpid()))
        time.sleep(self.delay)

    def __call__(self, row, path):
        with open(self.log, "a") as f:
            f.write(f"{row}\n")
        return row, torch.full((3, 32, 32), float(row)), None


def test_a_worker_dying_while_it_sends_an_answer_is_an_error_not_a_hang(tmp_path):
    """A shared result queue left a half-sent message that blocked the main process forever."""
    from causalclip.features.cpu_pool import PoolError, cpu_pool_batches
    from causalclip.features.extract import _collate

    tasks = [([2 * i, 2 * i + 1], ["a", "b"]) for i in range(6)]
    outcome = []

    def consume():
        try:
            for rows, _feats, _ in cpu_pool_batches(
                _DiesMidAnswer(), tasks, processes=1, decode=_ConstantImages(str(tmp_path / "log")),
                collate=_collate, storage="float32", batch_size=2,
            ):  # fmt: skip
                outcome.append(rows)
                time.sleep(1.5)  # a slow consumer (writing a shard): the worker's next answer fills the pipe
        except PoolError as exc:
            outcome.append(exc)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "the main process hangs on the half-sent answer of a dead worker"
    assert outcome[0] == [0, 1] and isinstance(outcome[-1], PoolError)
    assert "died (exit code 7)" in str(outcome[-1])


class _OneSlowStarter(_ConstantImages):
    """As _ConstantImages; the second worker to unpickle it takes 40 s to start (a late torch.compile)."""

    def __setstate__(self, state):
        self.__dict__.update(state)
        try:
            os.close(os.open(self.log + ".first", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            time.sleep(40)


def test_the_pool_ends_without_waiting_for_a_worker_that_is_still_starting(tmp_path):
    """Every batch computed by the workers that were ready: one still starting (compiling) is not waited for."""
    from causalclip.features.cpu_pool import cpu_pool_batches
    from causalclip.features.extract import _collate

    got = []
    pool = cpu_pool_batches(
        _Flaky(str(tmp_path / "no-flag")), [([0], ["a"]), ([1], ["b"])], processes=2,
        decode=_OneSlowStarter(str(tmp_path / "log")), collate=_collate, storage="float32", batch_size=1,
    )  # fmt: skip
    for rows, _, _ in pool:
        got += rows
        last = time.monotonic()
    assert sorted(got) == [0, 1]
    assert time.monotonic() - last < 15  # it used to wait up to 30 s for the slow worker


PARENT_DIES_SCRIPT = """
import os, signal, sys, threading, time
import torch
from causalclip.backbones.base import Backbone
from causalclip.features.cpu_pool import cpu_pool_batches
from causalclip.features.extract import _collate


class Mean(Backbone):
    dim = 3

    def forward(self, pixels):
        return pixels.mean(dim=(2, 3))


class SlowToStart:  # unpickled by the worker while it starts: records its pid, then takes 2 s
    def __init__(self, log):
        self.log = log

    def __setstate__(self, state):
        self.__dict__.update(state)
        open(self.log + ".pid", "w").write(str(os.getpid()))
        time.sleep(2.0)

    def __call__(self, row, path):
        open(self.log, "a").write(f"{row}\\n")
        return row, torch.zeros(3, 8, 8), None


class Tasks(list):  # the pool iterates the tasks once the worker is started: die 0.3 s after that
    def __iter__(self):
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGKILL)).start()
        return super().__iter__()


if __name__ == "__main__":
    tasks = Tasks([([2 * i, 2 * i + 1], ["a", "b"]) for i in range(20)])
    for _ in cpu_pool_batches(Mean(), tasks, processes=1, decode=SlowToStart(sys.argv[1]), collate=_collate,
                              storage="float32", batch_size=2):
        pass
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_a_worker_still_starting_when_the_main_process_is_killed_computes_nothing(tmp_path):
    """The worker learns that the main process died even if that happened before the worker began (it used to
    take the new parent, init, for the main process and compute the whole queue)."""
    import subprocess
    import sys

    log, script = tmp_path / "decoded", tmp_path / "parent_dies.py"
    script.write_text(PARENT_DIES_SCRIPT)  # a file: the worker imports its classes from it
    proc = subprocess.Popen([sys.executable, str(script), str(log)])
    assert proc.wait(timeout=60) == -9  # killed by its own timer, 0.3 s after it started the worker
    pidfile, deadline = tmp_path / "decoded.pid", time.time() + 60
    while time.time() < deadline and not (pidfile.exists() and pidfile.read_text()):
        time.sleep(0.1)
    worker = int(pidfile.read_text())
    while time.time() < deadline and _alive(worker):
        time.sleep(0.1)
    assert not _alive(worker), "the worker outlived the main process"
    assert not log.exists(), "the orphaned worker computed batches for nobody"


def _spawned_children() -> list[int]:
    out = []
    for pid in _children(os.getpid()):
        try:
            if b"spawn_main" in open(f"/proc/{pid}/cmdline", "rb").read():
                out.append(pid)
        except OSError:
            pass
    return out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_an_error_in_the_main_process_stops_the_workers(flat_tree, tmp_path, monkeypatch):
    """A shard that cannot be written (disk full, ...) ends the job at once, workers included."""
    import causalclip.features.extract as ex

    root, samples = flat_tree
    flag = tmp_path / "slow"
    flag.touch()  # 0.5 s per batch: the workers would otherwise go on for several seconds
    real, calls = ex.write_shard, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(ex, "write_shard", failing)
    with pytest.raises(OSError, match="No space left") as info:
        _run(_Flaky(str(flag), mode="slow"), root, samples, tmp_path / "out", 2)
    # the traceback is kept alive (as a notebook or a debugger keeps it): the workers must have stopped anyway
    assert info.tb is not None
    assert not any(_alive(p) for p in _spawned_children()), "worker processes still run"


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import causalclip.cli.inspect as inspect_command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(inspect_command, "_cmd_inspect", interrupted)
    assert main(["inspect", "somewhere"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "run the same command again" in err and "Traceback" not in err
