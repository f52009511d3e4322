"""Images -> probabilities of fake with a detector folder: the engine behind ``causalclip detect`` and ``serve``.

:class:`DetectionEngine` loads a detector folder and its backbone **once**, checks that the backbone it loaded is
the one the head was trained on (feature dim, architecture, outputs, preprocessing), and then scores image files
or in-memory uploads. Decoding runs in parallel threads; the backbone and head run in one inference thread, one
batch at a time, so one engine can be shared by a command's pipeline and by a server's worker threads; requests
that arrive while a pass runs are batched together into the next one.

Large images: by default the paper's single centre crop (``crops="center"``, exactly what extraction computes).
``crops="grid"`` scores up to ``max_crops`` tiles of the preprocessing size spread evenly over the whole image and
averages their probabilities; it costs about one backbone pass per tile (docs/reports/serving-load.md#multi-crop-cost has measurements).
"""

from __future__ import annotations

import collections
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..backbones.base import Backbone, BackboneError, bf16_supported
from ..backbones.registry import load_backbone
from ..detector.folder import Detector, DetectorError, read_detector
from ..images.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, load_rgb, pil_to_rgb
from ..images.transforms import Preprocessing, check_rgb
from .detection import Detection

__all__ = [
    "CROP_MODES",
    "DeadlineExceeded",
    "DetectionEngine",
    "RequestCancelled",
    "backbone_spec",
    "check_backbone",
    "crop_boxes",
]

CROP_MODES = ("center", "grid")
# Extraction records the torch dtype it ran in; load_backbone takes these names.
_PRECISIONS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# How often a waiting caller looks at its cancel event (the queue wait itself cannot be woken by it).
_CANCEL_POLL_S = 0.05
# Passes whose time per input predicts the next pass's (their median: one slow pass, e.g. the first, does not count),
# if they ended within the last _PASS_WINDOW_S seconds; older ones predict nothing.
_PASS_HISTORY = 9
_PASS_WINDOW_S = 5.0
# A pass runs at least this often while jobs are queued, even one predicted to answer late: a prediction that
# drops every job would otherwise never be measured again (no pass, no new time).
_PROBE_AFTER_S = 1.0


# ------------------------------------------------------------------------------------------ backbone identity


def _clip_options(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in ("feature", "normalize") if k in record}


def _part_spec(record: dict[str, Any], where: str) -> tuple[str, dict[str, Any], bool]:
    """One backbone record -> (spec string part, CLIP options, is a CLIP part)."""
    name = record.get("name")
    if name == "clip":
        if not isinstance(record.get("model"), str):
            raise DetectorError(f"{where}: the CLIP backbone record has no 'model' (hub id or folder)")
        opts = _clip_options(record)
        if record.get("revision") is not None:
            opts["revision"] = record["revision"]
        return record["model"], opts, True
    if name == "clip-random":
        seed = re.search(r"seed (\d+)", str(record.get("weights", "")))
        if "arch" not in record or seed is None:
            raise DetectorError(f"{where}: the clip-random backbone record lacks its arch or seed")
        return f"clip-random:arch={record['arch']},seed={seed.group(1)}", _clip_options(record), True
    if name == "spectrum":
        return f"spectrum:size={record['size']},normalize={record.get('normalize', 'mean')}", {}, False
    if name == "npr":
        return f"npr:size={record['size']}", {}, False
    raise DetectorError(
        f"{where}: cannot rebuild a backbone named {name!r} from its record; "
        "known: clip, clip-random, spectrum, npr and combinations of them"
    )


def backbone_spec(
    record: dict[str, Any], preprocessing: dict[str, Any], *, model: str | None = None, where: str = "detector.json"
) -> tuple[str, dict[str, Any]]:
    """The ``load_backbone(spec, **options)`` arguments that rebuild the backbone a detector records.

    ``model`` replaces the CLIP part's hub id or folder (the same weights kept elsewhere, e.g. a local copy of a
    hub model on an offline machine).
    """
    parts = record.get("parts") if record.get("name") == "concat" else [record]
    if not isinstance(parts, list) or not parts:
        raise DetectorError(f"{where}: the backbone record has no parts")
    specs, options, n_clip = [], {}, 0
    for part in parts:
        spec, opts, is_clip = _part_spec(part, where)
        if is_clip:
            n_clip += 1
            if model is not None and part.get("name") == "clip":
                spec = model
            options.update(opts)
        specs.append(spec)
    if model is not None and not any(p.get("name") == "clip" for p in parts):
        raise DetectorError(f"{where}: --backbone replaces a CLIP model, but this detector's backbone has none")
    if n_clip:
        options["preprocessing_mode"] = preprocessing.get("mode", "crop")
    return "+".join(specs), options


def _mismatches(recorded: Any, loaded: Any, path: str, ignore: frozenset[str]) -> list[str]:
    """Where the loaded backbone's description differs from the record (keys the record does not have are new
    descriptive fields and do not count)."""
    if isinstance(recorded, dict) and isinstance(loaded, dict):
        out = []
        for key, value in recorded.items():
            if key in ignore:
                continue
            if key not in loaded:
                out.append(f"{path}{key}: recorded {value!r}, the loaded backbone has none")
            else:
                out += _mismatches(value, loaded[key], f"{path}{key}.", ignore)
        return out
    if isinstance(recorded, list) and isinstance(loaded, list) and len(recorded) == len(loaded):
        return [
            m
            for i, (r, v) in enumerate(zip(recorded, loaded, strict=True))
            for m in _mismatches(r, v, f"{path}{i}.", ignore)
        ]
    return [] if recorded == loaded else [f"{path.rstrip('.')}: recorded {recorded!r}, loaded {loaded!r}"]


def check_backbone(detector: Detector, backbone: Backbone, *, model_overridden: bool = False) -> None:
    """Refuse a backbone that is not the one the detector's head was trained on: a different feature dim, a
    different architecture or output (its ``describe()`` against detector.json), or different preprocessing."""
    where = detector.folder / "detector.json"
    dim = getattr(backbone, "dim", None)
    if dim != detector.feature_dim:
        raise DetectorError(
            f"{where}: backbone mismatch: the head takes {detector.feature_dim}-d features but the loaded backbone "
            f"{backbone_name(detector.backbone)!r} gives {dim}-d"
        )
    ignore = frozenset({"model", "revision"}) if model_overridden else frozenset()
    diffs = _mismatches(detector.backbone, backbone.describe(), "", ignore)
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise DetectorError(f"{where}: backbone mismatch: {shown}")
    prep = backbone.preprocessing.to_dict()
    if prep != detector.preprocessing:
        raise DetectorError(
            f"{where}: preprocessing mismatch: the detector records {detector.preprocessing!r} but the loaded "
            f"backbone preprocesses with {prep!r}"
        )


def backbone_name(record: dict[str, Any]) -> str:
    if record.get("name") == "concat":
        return "+".join(backbone_name(p) for p in record.get("parts", []))
    return str(record.get("model") or record.get("name") or "?")


def _default_precision(detector: Detector, device: torch.device) -> str:
    """The precision the features were extracted in, where this device runs it natively; otherwise auto."""
    recorded = _PRECISIONS.get(str(detector.provenance.get("precision")))
    if recorded == "fp32":
        return "fp32"
    if recorded == "bf16" and bf16_supported(device):
        return "bf16"
    if recorded == "fp16" and device.type == "cuda":
        return "fp16"
    return "auto"


# ------------------------------------------------------------------------------------------------- crops


def _starts(n: int, size: int, count: int) -> list[int]:
    """``count`` tile starts spread evenly over an axis of length n (>= size); one tile sits where the centre
    crop does (Python rounding, as torchvision CenterCrop)."""
    if count == 1:
        return [int(round((n - size) / 2.0))]
    return [int(round(i * (n - size) / (count - 1))) for i in range(count)]


def crop_boxes(height: int, width: int, size: int, max_crops: int) -> list[tuple[int, int, int, int]]:
    """Tiles (top, left, tile height, tile width) of a grid over the image: ceil(H/size) x ceil(W/size) tiles
    of ``size`` (overlapping a little where the side is not a multiple of it), thinned evenly to at most
    ``max_crops``. A side shorter than ``size`` gets one tile of its full length (zero-padded like the centre
    crop). An image of at most size x size gives exactly the centre crop."""
    if max_crops < 1:
        raise ValueError(f"max_crops must be >= 1, got {max_crops}")
    rows, cols = max(1, math.ceil(height / size)), max(1, math.ceil(width / size))
    while rows * cols > max_crops:  # thin the denser axis first, so the tiles stay spread over both
        if rows >= cols:
            rows -= 1
        else:
            cols -= 1
    th, tw = min(height, size), min(width, size)
    tops = _starts(height, size, rows) if height >= size else [0]
    lefts = _starts(width, size, cols) if width >= size else [0]
    return [(t, left, th, tw) for t in tops for left in lefts]


# --------------------------------------------------------------------------------------------- the engine


class DeadlineExceeded(TimeoutError):
    """A queued request was dropped unscored: its deadline passed before a forward pass took it, or the pass would
    have answered it after its deadline."""


class RequestCancelled(Exception):
    """A queued request was dropped unscored because its caller cancelled it (e.g. an HTTP client went away)."""


@dataclass(eq=False)  # identity, not array comparison: the queue removes a cancelled job by identity
class _Job:
    pixels: np.ndarray
    deadline: float | None = None  # time.monotonic() by which the job must be answered, else it is dropped
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


@dataclass
class _Prepared:
    name: str
    pixels: np.ndarray | None  # (k, 3, S, S) float32
    error: str | None = None


class DetectionEngine:
    """A detector folder plus its backbone, loaded once, scoring images.

    ``detector``: a detector folder or a loaded :class:`Detector`. ``precision``: None takes the precision the
    features were extracted in where the device runs it natively (else ``auto``). ``backbone_model``: a hub id or
    folder replacing the recorded CLIP model (same weights elsewhere). ``threshold``: None uses the detector's.
    ``crops``: ``center`` (the paper's single centre crop) or ``grid`` (up to ``max_crops`` tiles, probabilities
    averaged). ``batch_size`` counts backbone inputs (crops), ``workers`` decoding threads. ``compile``:
    ``torch.compile`` the backbone (True: the inductor backend; a name or callable gives another backend) and run one
    pass of every batch size 1..``batch_size`` before the engine is returned, so that compilation (minutes for
    ViT-L/14 on a CPU) happens while loading, not in the first requests (:meth:`warm_up`).
    """

    def __init__(
        self,
        detector: str | os.PathLike[str] | Detector,
        *,
        device: str = "cpu",
        precision: str | None = None,
        backbone_model: str | None = None,
        threshold: float | None = None,
        crops: str = "center",
        max_crops: int = 16,
        batch_size: int = 8,
        workers: int = 2,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        compile: bool | str | Callable[..., Any] = False,
    ) -> None:
        if crops not in CROP_MODES:
            raise ValueError(f"crops must be one of {list(CROP_MODES)}, got {crops!r}")
        if not isinstance(max_crops, int) or max_crops < 1:
            raise ValueError(f"max_crops must be a positive integer, got {max_crops!r}")
        if batch_size < 1 or workers < 1:
            raise ValueError("batch_size and workers must be >= 1")
        det = detector if isinstance(detector, Detector) else read_detector(detector, device=device)
        self.detector = det
        self.device = torch.device(device)
        self.preprocessing = Preprocessing.from_dict(det.preprocessing)
        if crops == "grid" and self.preprocessing.mode != "crop":
            raise DetectorError(
                f"{det.folder / 'detector.json'}: multi-crop needs the centre-crop preprocessing (mode 'crop'); "
                f"this detector resizes images (mode {self.preprocessing.mode!r}), so a single crop sees the whole "
                "image already"
            )
        if det.kind == "network":  # a network trained on images: pixels in, logits out, no backbone
            if backbone_model is not None:
                raise DetectorError(f"{det.folder}: a network detector has no backbone to replace (backbone_model)")
            if precision not in (None, "fp32"):
                raise DetectorError(f"{det.folder}: a network detector runs in fp32, not {precision!r}")
            if compile:
                raise DetectorError(f"{det.folder}: compile applies to a backbone; a network detector has none")
            self.precision, self.backbone = "fp32", None
        else:
            spec, options = backbone_spec(
                det.backbone, det.preprocessing, model=backbone_model, where=str(det.folder / "detector.json")
            )
            self.precision = precision or _default_precision(det, self.device)
            self.backbone = load_backbone(spec, device=self.device, precision=self.precision, **options)
            self.backbone.eval()
            check_backbone(det, self.backbone, model_overridden=backbone_model is not None)
            if compile:
                try:
                    model = self.backbone.model
                except BackboneError as exc:  # combined forensic backbones have no one network to compile
                    raise DetectorError(
                        f"{det.folder}: cannot compile this backbone: {exc}; compile needs a detector made with "
                        "one backbone (a CLIP, or e.g. `causalclip demo --backbone spectrum:size=64`)"
                    ) from exc
                backend = "inductor" if compile is True else compile
                self.backbone.model = torch.compile(model, backend=backend)
        self.threshold = det.threshold if threshold is None else float(threshold)
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        self.crops, self.max_crops = crops, max_crops
        self.batch_size, self.workers, self.max_pixels = batch_size, workers, max_pixels
        self._lock = threading.Lock()  # held by the inference thread during a pass
        self._cond = threading.Condition()  # guards the queue; wakes the inference thread
        self._queue: collections.deque[_Job] = collections.deque()
        self._worker: threading.Thread | None = None
        self.compiled = bool(compile)
        self.warm_up_seconds: float | None = None  # set by warm_up()
        self.passes = 0  # forward passes run (batches), for tests and monitoring
        self.dropped = 0  # queued requests dropped unscored (deadline passed or cancelled)
        # Seconds per backbone input of the latest passes (inference thread only): predicts whether a pass would
        # end after a queued job's deadline, see _run_queued.
        self._pass_seconds: collections.deque[tuple[float, float]] = collections.deque(maxlen=_PASS_HISTORY)
        self._last_pass = -math.inf  # time.monotonic() when the latest pass started
        if self.compiled:
            self.warm_up()

    # ---- describing

    def describe(self) -> dict[str, Any]:
        """What is loaded, for ``GET /v1/model`` and logs."""
        det = self.detector
        return {
            "detector": str(det.folder),
            "kind": det.kind,
            "head": det.name,
            "backbone": backbone_name(det.backbone) if det.kind == "features" else None,
            "backbone_record": det.backbone,
            "feature_dim": det.feature_dim,
            "preprocessing": det.preprocessing,
            "threshold": self.threshold,
            "threshold_source": "override" if self.threshold != det.threshold else "detector",
            "calibration": det.calibration,
            "provenance": det.provenance,
            "crops": self.crops,
            "max_crops": self.max_crops if self.crops == "grid" else 1,
            "device": str(self.device),
            "precision": getattr(self.backbone, "precision", self.precision) if self.backbone else self.precision,
            "compiled": self.compiled,
            "warm_up_seconds": self.warm_up_seconds,
        }

    def warm_up(self) -> list[int]:
        """One forward pass of every batch size 1..``batch_size`` on blank inputs (not counted in ``passes``), so
        that a compiled backbone compiles for each size now rather than in a request; returns the sizes run.
        The engine calls it itself when ``compile`` is set."""
        size = self.preprocessing.size
        t0 = time.perf_counter()
        sizes = list(range(1, self.batch_size + 1))
        with self._lock:
            for n in sizes:
                self._forward(np.zeros((n, 3, size, size), np.float32))
        self.warm_up_seconds = time.perf_counter() - t0
        return sizes

    # ---- pixels

    def __repr__(self) -> str:
        model = self.backbone.describe().get("name") if self.backbone is not None else None
        what = f"backbone {model!r}" if self.backbone is not None else f"network {self.detector.name!r}"
        return (
            f"DetectionEngine({str(self.detector.folder)!r}, {what}, "
            f"device {str(self.device)!r}, precision {self.precision!r}, threshold {self.threshold:.4g}, "
            f"crops {self.crops!r})"
        )

    def crops_of(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (k, 3, S, S) float32 backbone inputs: the centre crop, or the grid's tiles."""
        if self.crops == "center":
            return self.preprocessing(rgb)[None]
        size = self.preprocessing.size
        boxes = crop_boxes(rgb.shape[0], rgb.shape[1], size, self.max_crops)
        return np.stack([self.preprocessing(rgb[t : t + h, x : x + w]) for t, x, h, w in boxes])

    def prepare(self, name: str, data: bytes | None = None) -> _Prepared:
        """Decode (from ``data``, or the file ``name``) and preprocess; never raises for a bad image."""
        try:
            rgb = load_rgb(name, max_pixels=self.max_pixels, data=data)
            return _Prepared(name, self.crops_of(rgb))
        except ImageDecodeError as exc:
            return _Prepared(name, None, exc.reason)

    @torch.inference_mode()
    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        out = np.empty(len(pixels), dtype=np.float64)
        for i in range(0, len(pixels), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(pixels[i : i + self.batch_size])).to(self.device)
            if self.backbone is None:
                out[i : i + len(x)] = self.detector.score_pixels(x)
            else:
                out[i : i + len(x)] = self.detector.score(self.backbone(x).float())
        return out

    def probabilities(
        self, pixels: np.ndarray, *, deadline: float | None = None, cancel: threading.Event | None = None
    ) -> np.ndarray:
        """(n, 3, S, S) preprocessed inputs -> (n,) probabilities of fake. Thread-safe, and batched across threads.

        Every forward pass runs in one inference thread, one at a time. It takes the queued requests of all
        threads in arrival order, up to ``batch_size`` inputs per pass, so concurrent single-image requests (a
        server under load) share passes instead of queueing for one pass each; a larger request runs in chunks.
        One thread also keeps the backbone's working memory in one allocator arena instead of one per caller.

        ``deadline`` (a ``time.monotonic()`` value by which the answer is wanted) and ``cancel`` (set by another
        thread) drop the request from the queue while no pass has taken it yet, raising :class:`DeadlineExceeded`
        or :class:`RequestCancelled`; a request already in a pass finishes (a pass is not interrupted). A pass is
        not started for a request it would answer after its deadline: the time per input of the latest passes
        (:meth:`predicted_pass_seconds`), times the pass's inputs, predicts when the pass ends. On a CPU a pass costs
        about its inputs times one input's pass; where batching is cheaper (a GPU) times measured on small passes
        overestimate large ones and the reverse, so there the deadline is kept less exactly. A pass runs at least
        once a second while requests wait, whatever the prediction, so that a stale one is measured again.
        A server uses them so that work nobody waits for any more never costs a forward pass, and so that an
        answer does not come later than the deadline its client was promised.
        """
        job = _Job(np.asarray(pixels, dtype=np.float32), deadline=deadline)
        with self._cond:
            self._queue.append(job)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="causalclip-inference", daemon=True)
                self._worker.start()
            self._cond.notify()
        while not job.done.is_set():
            expired = deadline is not None and time.monotonic() >= deadline
            if expired or (cancel is not None and cancel.is_set()):
                if self._drop(job):
                    raise DeadlineExceeded("deadline passed while queued") if expired else RequestCancelled()
                job.done.wait()  # a pass has it already: it ends soon
                break
            # a cancel event cannot wake this wait, so look at it a few times a second
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if cancel is not None:
                wait = _CANCEL_POLL_S if wait is None else min(wait, _CANCEL_POLL_S)
            job.done.wait(wait)
        if job.error is not None:
            raise job.error
        return job.result

    def _drop(self, job: _Job) -> bool:
        """Remove ``job`` from the queue if no pass has taken it; True if it was removed."""
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return False
            self.dropped += 1
            return True

    @property
    def queued_inputs(self) -> int:
        """Backbone inputs (crops) waiting for a forward pass, not counting the pass running now."""
        with self._cond:
            return sum(len(j.pixels) for j in self._queue)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
            with self._lock:
                self._run_queued()

    def predicted_pass_seconds(self, inputs: int) -> float:
        """Seconds a pass over ``inputs`` backbone inputs is expected to take: the time per input of the latest
        passes of the last 5 s times ``inputs`` (0 when there are none). The time per input is the larger of their
        median and the very latest pass's: one slow pass among them does not count, but a slowdown that has just
        begun (a burst whose decoding competes with the passes for the cores) counts at once."""
        now = time.monotonic()
        recent = [per_input for ended, per_input in list(self._pass_seconds) if ended >= now - _PASS_WINDOW_S]
        return max(float(np.median(recent)), recent[-1]) * inputs if recent else 0.0

    def planned_pass_seconds(self, inputs: int) -> float:
        """What to plan a pass over ``inputs`` inputs for: :meth:`predicted_pass_seconds`, or 0 when no pass has run
        for a second (the next one is a probe that runs whatever the prediction, see :meth:`probabilities`).
        Admission uses it too, so that a stale prediction cannot refuse every request before a pass measures again."""
        return 0.0 if time.monotonic() - self._last_pass >= _PROBE_AFTER_S else self.predicted_pass_seconds(inputs)

    def _run_queued(self) -> None:
        """Under ``_lock``: one pass over the oldest queued jobs that fit in a batch (at least one job).

        A job whose deadline has passed, or would pass before a pass over it alone ends, is dropped unscored; a
        job that would make the pass end after the deadline of a job already in it waits for the next pass. When
        no pass has run for _PROBE_AFTER_S, the oldest job whose deadline has not passed runs whatever the
        prediction (a probe: the prediction may be stale)."""
        with self._cond:
            jobs, n, now, due = [], 0, time.monotonic(), math.inf
            while self._queue and (not jobs or n + len(self._queue[0].pixels) <= self.batch_size):
                job = self._queue[0]
                ends = now + self.planned_pass_seconds(n + len(job.pixels))
                if job.deadline is not None and (now >= job.deadline or (not jobs and ends > job.deadline)):
                    self._queue.popleft()  # nobody waits for it any more, or its answer would come too late
                    self.dropped += 1
                    job.error = DeadlineExceeded(
                        "deadline passed while queued"
                        if now >= job.deadline
                        else "would not be answered by its "
                        f"deadline (a pass takes about {self.predicted_pass_seconds(len(job.pixels)):.2f} s)"
                    )
                    job.done.set()
                    continue
                if ends > min(due, job.deadline if job.deadline is not None else math.inf):
                    break  # with it, this pass would answer a job late: it goes into the next one
                self._queue.popleft()
                jobs.append(job)
                n += len(job.pixels)
                due = min(due, job.deadline if job.deadline is not None else math.inf)
        if not jobs:
            return
        self.passes += 1
        started = self._last_pass = time.monotonic()
        try:
            probs = self._forward(np.concatenate([j.pixels for j in jobs]))
            if n:  # a request of no inputs measures nothing
                ended = time.monotonic()
                self._pass_seconds.append((ended, (ended - started) / n))
            offset = 0
            for j in jobs:
                j.result = probs[offset : offset + len(j.pixels)]
                offset += len(j.pixels)
        except BaseException as exc:  # every waiting caller gets the error, none waits forever
            for j in jobs:
                j.error = exc
        finally:
            for j in jobs:
                j.done.set()

    def score_prepared(
        self, items: Sequence[_Prepared], *, deadline: float | None = None, cancel: threading.Event | None = None
    ) -> list[Detection]:
        """Score the usable items of ``items`` together (one batched pass) and report the others.
        ``deadline`` and ``cancel``: as in :meth:`probabilities`."""
        good = [it for it in items if it.pixels is not None]
        pixels = np.concatenate([it.pixels for it in good]) if good else None
        probs = np.empty(0) if pixels is None else self.probabilities(pixels, deadline=deadline, cancel=cancel)
        results, offset = {}, 0
        for it in good:
            k = len(it.pixels)
            p = float(probs[offset : offset + k].mean())
            offset += k
            results[id(it)] = Detection(it.name, p, "fake" if p > self.threshold else "real", crops=k)
        return [results.get(id(it)) or Detection(it.name, error=it.error) for it in items]

    # ---- public scoring

    def score(self, images: Iterable[str | os.PathLike[str] | Image.Image | np.ndarray]) -> list[Detection]:
        """Paths, PIL images or (H, W, 3) uint8 RGB arrays (mixed freely) -> one Detection each, in order.

        An input that cannot be used gets a Detection with ``error`` set (never an exception), like a bad file in
        :meth:`detect_paths`. In-memory images follow the same rules as files (EXIF orientation, alpha on black).
        Inputs are decoded ``batch_size`` at a time, so memory does not grow with their number.
        """
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            raise TypeError(f"score() takes a list of images; got one {type(images).__name__}: pass [image]")
        out: list[Detection] = []
        chunk: list[_Prepared] = []
        for i, item in enumerate(images):
            chunk.append(self._prepare_any(i, item))
            if len(chunk) == self.batch_size:
                out += self.score_prepared(chunk)
                chunk = []
        return out + self.score_prepared(chunk) if chunk else out

    def _prepare_any(self, i: int, item: Any) -> _Prepared:
        """One input of :meth:`score`, decoded and preprocessed, or the reason it cannot be used."""
        if isinstance(item, (str, os.PathLike)):
            return self.prepare(os.fspath(item))
        name = f"<image {i}>"
        try:
            if isinstance(item, Image.Image):
                rgb = pil_to_rgb(item, name=getattr(item, "filename", "") or name, max_pixels=self.max_pixels)
            elif isinstance(item, np.ndarray):
                check_rgb(item)
                if item.shape[0] * item.shape[1] > self.max_pixels:
                    raise ValueError(f"{item.shape[0] * item.shape[1]} pixels > max_pixels {self.max_pixels}")
                rgb = item
            else:
                raise ValueError(f"expected a path, a PIL image or an RGB array, got {type(item).__name__}")
            return _Prepared(name, self.crops_of(rgb))
        except ImageDecodeError as exc:
            return _Prepared(name, None, exc.reason)
        except ValueError as exc:
            return _Prepared(name, None, str(exc))

    def detect_bytes(self, items: Sequence[tuple[str, bytes]]) -> list[Detection]:
        """Uploads (name, file bytes) -> one Detection each, in order."""
        return self.score_prepared([self.prepare(name, data) for name, data in items])

    def detect_paths(self, paths: Iterable[str | os.PathLike[str]]) -> Iterator[Detection]:
        """Image files -> one Detection each, in input order, streamed: decoding of the next batch overlaps the
        backbone's work on this one, with at most a few batches of decoded images in memory."""
        chunk = self.batch_size  # images per call; their crops are run batch_size at a time
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="causalclip-decode") as pool:
            pending: collections.deque[Future[_Prepared]] = collections.deque()
            it = iter(paths)
            exhausted = False

            def fill() -> None:
                nonlocal exhausted
                while not exhausted and len(pending) < 2 * chunk + self.workers:
                    try:
                        p = next(it)
                    except StopIteration:
                        exhausted = True
                        return
                    pending.append(pool.submit(self.prepare, os.fspath(p)))

            fill()
            while pending:
                batch = [pending.popleft().result() for _ in range(min(chunk, len(pending)))]
                fill()
                yield from self.score_prepared(batch)


def load_detector(folder: str | os.PathLike[str], **options: Any) -> DetectionEngine:
    """A detector folder and its backbone, loaded once, ready to score: ``load_detector(folder).score(images)``.

    ``options`` are those of :class:`DetectionEngine` (device, precision, backbone_model, threshold, crops, ...).
    """
    return DetectionEngine(folder, **options)
