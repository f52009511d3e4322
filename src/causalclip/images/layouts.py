"""Dataset layouts: turn the folder trees users have on disk into one sorted table of images to extract.

Each layout is a function registered in ``LAYOUTS`` under the name users pass as ``--layout``; ``list_samples``
is the one entry point. A layout only *lists* files: it never opens an image (decoding and reporting unreadable
files is the extraction step's job), so listing a million files costs a directory walk and nothing more.

Two promises the extraction step relies on:

- **Deterministic order.** Rows are sorted by (generator, label, path), never by directory-walk order, so two
  runs over the same tree give identical tables (resume depends on it), whatever the filesystem returns.
- **Nothing is skipped silently.** Every file found but not used (wrong extension, hidden, broken link, a file
  or folder outside the expected structure) is listed in ``ignored`` with a reason. Folders that are skipped on
  purpose (the other split, images left out by ``max_per_class``) are choices, not losses, and are not listed.

Labels always come from folder *names* (``ai`` -> 1, ``nature`` -> 0; ``0_real`` -> 0, ``1_fake`` -> 1), never
from alphabetical order, which would make GenImage's ``ai`` the real class. The layouts and their folder
trees are shown in docs/guides/layouts.md.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "LayoutError",
    "LayoutResult",
    "list_samples",
    "register_layout",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

# Folder names that name a split rather than a generator or a class.
SPLIT_NAMES = frozenset({"train", "val", "test"})

# CNNDetection's generators that have a class level, and the class names found in its train and test sets
# (the 20 LSUN classes of ProGAN, StyleGAN's and StyleGAN2's LSUN classes, CycleGAN's domains). They decide
# whether a folder whose sub-folders all hold 0_real/1_fake is one generator with classes or several generators.
MULTICLASS_GENERATORS = frozenset({"progan", "stylegan", "stylegan2", "cyclegan"})
KNOWN_CLASSES = frozenset(
    {
        *("airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable"),
        *("dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"),
        *("bedroom", "church", "apple", "orange", "zebra", "summer", "winter"),
    }
)

# Plain real/fake folder pairs accepted by the ``folders`` layout (matched case-insensitively).
LABEL_FOLDERS = (("real", "fake"), ("0_real", "1_fake"), ("nature", "ai"))

_MAX_FOUND_SHOWN = 12


class LayoutError(ValueError):
    """A dataset folder or manifest does not match the layout asked for; the message names the path, what was
    expected and what was found."""


@dataclass
class LayoutResult:
    """The images a layout found under ``root``.

    ``samples``: path (POSIX, relative to ``root``; a manifest's absolute paths stay absolute), label (int64,
    0 real / 1 fake), generator (str), plus layout-specific columns (cnndetection: ``class``, None where a
    generator has no class level), sorted by (generator, label, path).
    ``ignored``: path, reason -- every file found but not used; a folder that was not scanned is listed once,
    with a trailing "/".
    """

    root: Path
    samples: pd.DataFrame
    ignored: pd.DataFrame


LayoutFn = Callable[..., LayoutResult]
LAYOUTS: dict[str, LayoutFn] = {}


def register_layout(name: str) -> Callable[[LayoutFn], LayoutFn]:
    """Function decorator: make a layout selectable by ``name`` (``--layout NAME``).

    The function is called as ``fn(root, split=..., pairs=..., generator=...)`` and returns a sorted
    LayoutResult; balanced sampling is applied afterwards by ``list_samples``.
    """

    def decorate(fn: LayoutFn) -> LayoutFn:
        if name in LAYOUTS:
            raise ValueError(f"layout {name!r} registered twice")
        LAYOUTS[name] = fn
        return fn

    return decorate


def list_samples(
    root: str | os.PathLike[str],
    layout: str,
    *,
    split: str | None = None,
    pairs: Mapping[str, tuple[str | os.PathLike[str], str | os.PathLike[str]]] | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    generator: str | None = None,
) -> LayoutResult:
    """List the images under ``root`` (a folder, or a CSV/Parquet file for ``manifest``) read as ``layout``.

    ``split`` picks train/val(/test) where the layout has splits (required for genimage). ``pairs`` maps
    generator -> (real root, fake root) for the pairs layout; relative roots are taken relative to ``root``.
    ``generator`` names the single generator when ``root`` is one generator's folder (genimage, cnndetection,
    folders). ``max_per_class`` keeps at most that many images per (generator, label), chosen reproducibly
    from ``seed`` and order-preserving. Raises LayoutError when the tree does not match the layout.
    """
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; available: {sorted(LAYOUTS)}")
    if max_per_class is not None and (isinstance(max_per_class, bool) or max_per_class <= 0):
        raise LayoutError(f"max_per_class must be a positive integer or None, got {max_per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise LayoutError(f"seed must be a non-negative integer, got {seed!r}")
    result = LAYOUTS[layout](Path(root), split=split, pairs=pairs, generator=generator)
    if max_per_class is not None:
        result.samples = balanced_per_class(result.samples, max_per_class, int(seed))
    return result


def balanced_per_class(samples: pd.DataFrame, max_per_class: int, seed: int) -> pd.DataFrame:
    """At most ``max_per_class`` rows per (generator, label), order preserved.

    Each group draws from its own ``default_rng([seed, crc32(generator), label])`` rather than one shared
    generator, so that adding or removing a generator folder does not change which images the others keep.
    """
    keep = []
    groups = samples.groupby(["generator", "label"], sort=True).indices
    for (gen, label), idx in groups.items():
        if len(idx) > max_per_class:
            rng = np.random.default_rng([seed, zlib.crc32(str(gen).encode("utf-8")), int(label)])
            idx = idx[np.sort(rng.choice(len(idx), size=max_per_class, replace=False))]
        keep.append(idx)
    rows = np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
    return samples.iloc[rows].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------
# Walking folders


def _is_hidden(name: str) -> bool:
    # __MACOSX: the resource-fork folder that macOS zip tools add next to the real content.
    return name.startswith(".") or name == "__MACOSX"


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _printable(path: str) -> str:
    """A file name that is not valid UTF-8 (lone surrogates from os.scandir) in a form tables can store."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def _valid_name(name: str) -> bool:
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _found(dirs: Iterable[str], files: Iterable[str]) -> str:
    names = [f"{d}/" for d in dirs] + list(files)
    if not names:
        return "found nothing"
    shown = names[:_MAX_FOUND_SHOWN]
    more = f" ... ({len(names) - len(shown)} more)" if len(names) > len(shown) else ""
    return f"found {shown}{more}"


def _list_dir(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """(dirs, files, hidden): the sorted entry names of ``folder``; symlinks count as what they point to."""
    if not folder.exists():
        raise LayoutError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise LayoutError(f"{folder}: not a folder")
    dirs, files, hidden = [], [], []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if _is_hidden(entry.name):
                    hidden.append(entry.name)
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                (dirs if is_dir else files).append(entry.name)
    except OSError as exc:
        raise LayoutError(f"{folder}: cannot read folder: {exc}") from exc
    return sorted(dirs), sorted(files), sorted(hidden)


def _find(dirs: Iterable[str], name: str, where: Path) -> str | None:
    """The entry of ``dirs`` equal to ``name`` ignoring case (Train/, REAL/), or None."""
    hits = [d for d in dirs if d.lower() == name.lower()]
    if len(hits) > 1:
        raise LayoutError(f"{where}: folders {hits} differ only in case; keep one")
    return hits[0] if hits else None


class _Collector:
    """Accumulates the rows of a listing (as parallel lists: 1M rows must stay cheap) and the ignored files."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.labels: list[int] = []
        self.generators: list[str] = []
        self.classes: list[str | None] = []
        self.ignored: list[tuple[str, str]] = []

    def add(self, paths: list[str], label: int, generator: str, cls: str | None = None) -> None:
        n = len(paths)
        self.paths.extend(paths)
        self.labels.extend([label] * n)
        self.generators.extend([generator] * n)
        self.classes.extend([cls] * n)

    def ignore(self, path: str, reason: str) -> None:
        self.ignored.append((_printable(path), reason))

    def scan(self, folder: Path, rel: str) -> tuple[list[str], list[str]]:
        """(dirs, files) of a structural level; hidden entries are reported as ignored."""
        dirs, files, hidden = _list_dir(folder)
        for name in hidden:
            if (folder / name).is_dir():
                self.ignore(_join(rel, name) + "/", "hidden folder; not scanned")
            else:
                self.ignore(_join(rel, name), "hidden file")
        return dirs, files

    def stray(self, rel: str, dirs: Iterable[str], files: Iterable[str], expected: str) -> None:
        """Report entries of a structural level that the layout does not use."""
        for d in dirs:
            self.ignore(_join(rel, d) + "/", f"folder not part of the layout (expected {expected}); not scanned")
        for f in files:
            self.ignore(_join(rel, f), f"file outside the layout's folders (expected {expected})")

    def images(self, folder: Path, rel: str, *, skip: frozenset[str] = frozenset()) -> list[str]:
        """Relative paths of the image files under ``folder``, recursively; everything else goes to ignored.

        Follows symbolic links to folders but never enters a folder twice (no symlink loops). Sub-folders
        whose lower-case name is in ``skip`` are not entered.
        """
        found: list[str] = []
        try:
            st = os.stat(folder)
        except OSError as exc:
            raise LayoutError(f"{folder}: folder not found ({exc.strerror})") from exc
        seen = {(st.st_dev, st.st_ino)}
        stack = [(os.fspath(folder), rel)]
        while stack:
            path, prefix = stack.pop()
            try:
                it = os.scandir(path)
            except OSError as exc:
                raise LayoutError(f"{path}: cannot read folder: {exc}") from exc
            with it:
                for entry in it:
                    name = entry.name
                    rp = _join(prefix, name)
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        is_dir = False
                    if _is_hidden(name):
                        self.ignore(
                            rp + "/" if is_dir else rp, "hidden folder; not scanned" if is_dir else "hidden file"
                        )
                    elif not _valid_name(name):
                        self.ignore(rp + "/" if is_dir else rp, "name is not valid UTF-8")
                    elif is_dir:
                        if name.lower() in skip:
                            continue
                        try:
                            dst = entry.stat()
                        except OSError as exc:
                            self.ignore(rp + "/", f"cannot read folder: {exc.strerror}")
                            continue
                        key = (dst.st_dev, dst.st_ino)
                        if key in seen:
                            self.ignore(
                                rp + "/", "folder already scanned through another path (symlink); not scanned again"
                            )
                            continue
                        seen.add(key)
                        stack.append((entry.path, rp))
                    elif not entry.is_file():
                        self.ignore(rp, "not a regular file (broken link or special file)")
                    elif os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                        self.ignore(rp, "not an image file extension")
                    else:
                        found.append(rp)
        return found

    def leaf(self, folder: Path, rel: str, label: int, generator: str, cls: str | None = None) -> None:
        """Add every image under a label folder; a label folder without images is an error."""
        n_ignored = len(self.ignored)
        paths = self.images(folder, rel)
        if not paths:
            others = len(self.ignored) - n_ignored
            raise LayoutError(
                f"{folder}: no image files ({others} other entries); expected files ending in "
                f"{sorted(IMAGE_EXTENSIONS)}"
            )
        self.add(paths, label, generator, cls)

    def result(self, root: Path, *, class_column: bool = False) -> LayoutResult:
        columns: dict[str, object] = {
            "path": pd.Series(self.paths, dtype=object),
            "label": pd.Series(self.labels, dtype=np.int64),
            "generator": pd.Series(self.generators, dtype=object),
        }
        if class_column:
            columns["class"] = pd.Series(self.classes, dtype=object)
        return LayoutResult(root=root, samples=_sorted(pd.DataFrame(columns)), ignored=self.ignored_frame())

    def ignored_frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.ignored, columns=["path", "reason"], dtype=object).drop_duplicates()
        return df.sort_values(["path", "reason"], kind="stable", ignore_index=True)


def _sorted(samples: pd.DataFrame) -> pd.DataFrame:
    return samples.sort_values(["generator", "label", "path"], kind="stable", ignore_index=True)


def _strip_split_suffix(name: str) -> str:
    for suffix in ("_train", "_val", "_test"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _generator_name(folder: Path) -> str:
    """The generator a folder stands for: its name without a trailing _train/_val/_test (progan_train ->
    progan, so the ProGAN training set and CNNDetection's progan test folder agree); a bare split folder
    (train/, val/, test/) takes its parent's name."""
    p = Path(os.path.abspath(folder))
    while p.name.lower() in SPLIT_NAMES and p.parent != p:
        p = p.parent
    return _strip_split_suffix(p.name) or p.name


def _reject(layout: str, root: Path, **options: object) -> None:
    """Options the layout does not use are an error, not silently dropped (they change what users expect)."""
    for key, value in options.items():
        if value is not None:
            raise LayoutError(f"{root}: the {layout} layout does not take {key}= (got {value!r})")


def _descend_split(root: Path, dirs: list[str], split: str | None) -> tuple[Path, str]:
    """(folder, relative path) to read: ``root/<split>`` when ``split`` is given, else ``root``."""
    if split is None:
        splits = [d for d in dirs if d.lower() in SPLIT_NAMES]
        if len(splits) >= 2:
            raise LayoutError(f"{root}: holds the split folders {splits}; pass split= to choose one")
        return root, ""
    name = _find(dirs, split, root)
    if name is None:
        raise LayoutError(f"{root}: split {split!r} asked for, but there is no {split}/ folder; {_found(dirs, [])}")
    return root / name, name


# ---------------------------------------------------------------------------------------------------------
# GenImage


_GENIMAGE_LABELS = (("nature", 0), ("ai", 1))


def _has_genimage_split(dirs: Iterable[str]) -> bool:
    return any(d.lower() in ("train", "val") for d in dirs)


def _genimage_holder(folder: Path, rel: str, out: _Collector) -> tuple[Path, str]:
    """The folder holding train/ and val/ for one generator: ``folder`` itself or its one sub-folder that does
    (the release's extra level, e.g. stable_diffusion_v_1_4/imagenet_ai_0419_sdv4/)."""
    dirs, files, _ = _list_dir(folder)
    if _has_genimage_split(dirs):
        return folder, rel  # its entries are scanned and reported by _genimage_generator
    out.scan(folder, rel)
    nested = [d for d in dirs if _has_genimage_split(_list_dir(folder / d)[0])]
    if not nested:
        raise LayoutError(
            f"{folder}: expected train/ and val/ folders, directly or one folder down "
            f"(e.g. imagenet_ai_0419_sdv4/train/); {_found(dirs, files)}"
        )
    if len(nested) > 1:
        raise LayoutError(f"{folder}: several folders hold train/ or val/: {nested}; expected one")
    out.stray(rel, [d for d in dirs if d != nested[0]], files, "one folder holding train/ and val/")
    return folder / nested[0], _join(rel, nested[0])


def _genimage_generator(holder: Path, rel: str, split: str, generator: str, out: _Collector) -> None:
    dirs, files = out.scan(holder, rel)
    name = _find(dirs, split, holder)
    if name is None:
        raise LayoutError(f"{holder}: no {split}/ folder for generator {generator!r}; {_found(dirs, files)}")
    out.stray(rel, [d for d in dirs if d.lower() not in SPLIT_NAMES], files, "train/ and val/")
    split_dir, split_rel = holder / name, _join(rel, name)
    dirs, files = out.scan(split_dir, split_rel)
    found = {label: _find(dirs, folder_name, split_dir) for folder_name, label in _GENIMAGE_LABELS}
    if None in found.values():
        raise LayoutError(f"{split_dir}: expected ai/ (fake) and nature/ (real) folders; {_found(dirs, files)}")
    out.stray(split_rel, [d for d in dirs if d not in found.values()], files, "ai/ and nature/")
    for label, folder_name in found.items():
        out.leaf(split_dir / folder_name, _join(split_rel, folder_name), label, generator)


@register_layout("genimage")
def genimage(
    root: Path, *, split: str | None = None, pairs: object = None, generator: str | None = None
) -> LayoutResult:
    """GenImage: ``ROOT/<Generator>/[<subfolder>/]{train,val}/{ai,nature}/...``; ai -> 1, nature -> 0.

    ``split`` ("train" or "val") is required. ROOT may be the dataset folder (generator = each top-level folder
    name) or one generator's folder holding train/val directly or one level down (generator = ROOT's name,
    or ``generator``). A ROOT with a single sub-folder that holds train/val directly is read as one generator
    with the release's extra level (stable_diffusion_v_1_4/imagenet_ai_0419_sdv4/), not as a dataset of one.
    """
    _reject("genimage", root, pairs=pairs)
    if split is None or split.lower() not in ("train", "val"):
        raise LayoutError(
            f"{root}: the genimage layout needs split='train' or split='val' (GenImage's val/ is its test "
            f"set), got {split!r}"
        )
    split = split.lower()
    out = _Collector()
    dirs, files, _ = _list_dir(root)
    if _find(dirs, "ai", root) and _find(dirs, "nature", root):
        raise LayoutError(f"{root}: holds ai/ and nature/ directly; read one such folder with layout 'folders'")
    single = (
        generator is not None
        or _has_genimage_split(dirs)
        or (len(dirs) == 1 and _has_genimage_split(_list_dir(root / dirs[0])[0]))
    )
    if single:
        holder, rel = _genimage_holder(root, "", out)
        _genimage_generator(holder, rel, split, generator or _generator_name(root), out)
        return out.result(root)
    dirs, files = out.scan(root, "")
    if not dirs:
        raise LayoutError(f"{root}: expected one folder per generator holding train/ and val/; {_found(dirs, files)}")
    out.stray("", [], files, "one folder per generator")
    names: dict[str, str] = {}
    for d in dirs:
        gen = _strip_split_suffix(d)
        if gen in names:
            raise LayoutError(f"{root}: folders {names[gen]}/ and {d}/ both name generator {gen!r}")
        names[gen] = d
        holder, rel = _genimage_holder(root / d, d, out)
        _genimage_generator(holder, rel, split, gen, out)
    return out.result(root)


# ---------------------------------------------------------------------------------------------------------
# CNNDetection / ForenSynths (and UniversalFakeDetect's CNN test folders)


_CNN_LABELS = (("0_real", 0), ("1_fake", 1))


def _cnn_label_dirs(folder: Path, dirs: list[str]) -> dict[int, str] | None:
    """{label: folder name} when ``folder`` holds 0_real/ and 1_fake/; None when it holds neither."""
    real, fake = (_find(dirs, name, folder) for name, _ in _CNN_LABELS)
    if real is None and fake is None:
        return None
    if real is None or fake is None:
        raise LayoutError(
            f"{folder}: expected both 0_real/ and 1_fake/; {_found(dirs, [])}. (UniversalFakeDetect's "
            f"diffusion_datasets keeps reals and fakes in separate folders: read it with layout 'pairs')"
        )
    return {0: real, 1: fake}


def _is_cnn_leaf(folder: Path) -> bool:
    return _cnn_label_dirs(folder, _list_dir(folder)[0]) is not None


def _cnn_read_leaf(folder: Path, rel: str, generator: str, cls: str | None, out: _Collector) -> None:
    dirs, files = out.scan(folder, rel)
    labels = _cnn_label_dirs(folder, dirs)
    if labels is None:
        raise LayoutError(f"{folder}: expected 0_real/ and 1_fake/ folders; {_found(dirs, files)}")
    out.stray(rel, [d for d in dirs if d not in labels.values()], files, "0_real/ and 1_fake/")
    for label, name in labels.items():
        out.leaf(folder / name, _join(rel, name), label, generator, cls)


def _cnn_read_classes(folder: Path, rel: str, generator: str, out: _Collector) -> None:
    dirs, files = out.scan(folder, rel)
    if not dirs:
        raise LayoutError(f"{folder}: expected class folders holding 0_real/ and 1_fake/; {_found(dirs, files)}")
    out.stray(rel, [], files, "class folders")
    for d in dirs:
        if not _is_cnn_leaf(folder / d):
            raise LayoutError(
                f"{folder / d}: expected 0_real/ and 1_fake/ (a class of generator {generator!r}); "
                f"{_found(*_list_dir(folder / d)[:2])}"
            )
        _cnn_read_leaf(folder / d, _join(rel, d), generator, d, out)


@register_layout("cnndetection")
def cnndetection(
    root: Path, *, split: str | None = None, pairs: object = None, generator: str | None = None
) -> LayoutResult:
    """CNNDetection / ForenSynths: ``ROOT/<gen>/[<class>/]{0_real,1_fake}/...``; 0_real -> 0, 1_fake -> 1.

    The class level is optional per generator (progan, stylegan, stylegan2, cyclegan have it; biggan, gaugan,
    ... do not); its name goes to the ``class`` column. ROOT may also be one generator's folder, e.g. the
    training set ``progan_train/<class>/{0_real,1_fake}`` (generator "progan": a trailing _train/_val/_test is
    dropped). When ROOT holds train/val/test folders, ``split`` picks one. UniversalFakeDetect's copies of the
    CNNDetection test folders are this layout too; its diffusion_datasets is not (see the pairs layout).

    A ROOT whose sub-folders all hold 0_real/1_fake directly is one generator with classes when its name is a
    known multi-class generator, when all sub-folder names are known class names, or when ``generator`` is
    given; otherwise each sub-folder is a generator without classes.
    """
    _reject("cnndetection", root, pairs=pairs)
    out = _Collector()
    top_dirs, top_files = out.scan(root, "")
    folder, rel = _descend_split(root, top_dirs, split)
    if split is not None and _is_cnn_leaf(folder):
        siblings = [d for d in top_dirs if d != rel and d.lower() not in SPLIT_NAMES and _is_cnn_leaf(root / d)]
        if siblings:
            raise LayoutError(f"{folder}: looks like a class folder next to {siblings[:5]}, not a split; drop split=")
    if split is not None:
        out.stray("", [d for d in top_dirs if d.lower() not in SPLIT_NAMES], top_files, "train/, val/, test/")
        dirs, files = out.scan(folder, rel)
    else:
        dirs, files = top_dirs, top_files

    if _cnn_label_dirs(folder, dirs) is not None:  # a generator without classes
        _cnn_read_leaf(folder, rel, generator or _generator_name(folder), None, out)
        return out.result(root, class_column=True)
    if generator is not None:
        _cnn_read_classes(folder, rel, generator, out)
        return out.result(root, class_column=True)
    if not dirs:
        raise LayoutError(
            f"{folder}: expected 0_real/ and 1_fake/, class folders or generator folders holding them; "
            f"{_found(dirs, files)}"
        )
    leaf = {d: _is_cnn_leaf(folder / d) for d in dirs}
    own_name = _generator_name(folder)
    if all(leaf.values()) and (
        own_name.lower() in MULTICLASS_GENERATORS or all(d.lower() in KNOWN_CLASSES for d in dirs)
    ):
        _cnn_read_classes(folder, rel, own_name, out)
        return out.result(root, class_column=True)

    out.stray(rel, [], files, "one folder per generator")
    names: dict[str, str] = {}
    for d in dirs:
        gen = _strip_split_suffix(d)
        if gen in names:
            raise LayoutError(f"{folder}: folders {names[gen]}/ and {d}/ both name generator {gen!r}")
        names[gen] = d
        if leaf[d]:
            _cnn_read_leaf(folder / d, _join(rel, d), gen, None, out)
        else:
            _cnn_read_classes(folder / d, _join(rel, d), gen, out)
    return out.result(root, class_column=True)


# ---------------------------------------------------------------------------------------------------------
# Separate real and fake roots (UniversalFakeDetect)


def _is_inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@register_layout("pairs")
def pairs_layout(
    root: Path,
    *,
    split: str | None = None,
    pairs: Mapping[str, tuple[str | os.PathLike[str], str | os.PathLike[str]]] | None = None,
    generator: str | None = None,
) -> LayoutResult:
    """Separate real and fake roots per generator: ``pairs={"dalle": ("laion", "dalle"), ...}``.

    All images under a real root (recursively) are reals of that generator, all under a fake root fakes; a
    real root shared by several generators contributes its images once per generator. Relative roots are taken
    relative to ROOT. Paths in the result are relative to ROOT when every pair root lies inside it, otherwise
    to the roots' common folder. As in UniversalFakeDetect's "wang2020" mode, 1_fake/ folders inside a real
    root and 0_real/ folders inside a fake root are not entered, so a CNNDetection folder can serve as both
    roots. A file that would be both real and fake for one generator is an error.

    UniversalFakeDetect's diffusion_datasets is read this way: its reals (laion/0_real, imagenet/0_real) and
    fakes (dalle/1_fake, glide_100_27/1_fake, ...) live in separate folders, paired in its dataset_paths.py.
    """
    _reject("pairs", root, split=split, generator=generator)
    if not pairs:
        raise LayoutError(f"{root}: the pairs layout needs pairs={{generator: (real_root, fake_root), ...}}")
    base = os.path.abspath(root)
    resolved: dict[str, tuple[str, str]] = {}
    for name, value in pairs.items():
        if not isinstance(name, str) or not name:
            raise LayoutError(f"pairs: generator names must be non-empty strings, got {name!r}")
        if not isinstance(value, tuple | list) or len(value) != 2:
            raise LayoutError(f"pairs[{name!r}]: expected (real_root, fake_root), got {value!r}")
        # Overlapping roots are allowed (a CNNDetection folder as both): the per-file check below is exact.
        real, fake = (os.path.normpath(os.path.join(base, os.fspath(p))) for p in value)
        resolved[name] = (real, fake)
    all_roots = [p for pair in resolved.values() for p in pair]
    if all(_is_inside(p, base) for p in all_roots):
        out_root, out_base = root, base
    else:
        out_base = os.path.commonpath(all_roots)
        out_root = Path(out_base)

    out = _Collector()
    cache: dict[tuple[str, int], list[str]] = {}
    for name in sorted(resolved):
        lists = []
        for label, folder in enumerate(resolved[name]):
            key = (folder, label)
            if key not in cache:
                if not os.path.isdir(folder):
                    side = "fake" if label else "real"
                    raise LayoutError(f"{folder}: {side} root of generator {name!r} not found or not a folder")
                rel = os.path.relpath(folder, out_base).replace(os.sep, "/")
                rel = "" if rel == "." else rel
                n_ignored = len(out.ignored)
                cache[key] = out.images(Path(folder), rel, skip=frozenset({"1_fake" if label == 0 else "0_real"}))
                if not cache[key]:
                    raise LayoutError(
                        f"{folder}: no image files for the {'fake' if label else 'real'} side of generator "
                        f"{name!r} ({len(out.ignored) - n_ignored} other entries)"
                    )
            lists.append(cache[key])
        both = set(lists[0]).intersection(lists[1])
        if both:
            raise LayoutError(
                f"pairs[{name!r}]: {len(both)} file(s) are under both the real and the fake root, e.g. "
                f"{os.path.join(out_base, min(both))}"
            )
        for label, paths in enumerate(lists):
            out.add(paths, label, name)
    return out.result(out_root)


# ---------------------------------------------------------------------------------------------------------
# A plain real/fake pair of folders


@register_layout("folders")
def folders(
    root: Path, *, split: str | None = None, pairs: object = None, generator: str | None = None
) -> LayoutResult:
    """One generator's reals and fakes: ``ROOT/{real,fake}/...`` (or ``0_real/1_fake``, ``nature/ai``; any case).

    Images are taken recursively under each. Generator = ``generator``, else ROOT's name (a trailing
    _train/_val/_test dropped; a bare train/val/test folder takes its parent's name). When ROOT holds
    train/val/test folders, ``split`` picks one (CIFAKE: ``cifake/{train,test}/{REAL,FAKE}``).
    """
    _reject("folders", root, pairs=pairs)
    out = _Collector()
    top_dirs, top_files = out.scan(root, "")
    folder, rel = _descend_split(root, top_dirs, split)
    if split is not None:
        out.stray("", [d for d in top_dirs if d.lower() not in SPLIT_NAMES], top_files, "train/, val/, test/")
        dirs, files = out.scan(folder, rel)
    else:
        dirs, files = top_dirs, top_files
    matches = []
    for real_name, fake_name in LABEL_FOLDERS:
        real, fake = _find(dirs, real_name, folder), _find(dirs, fake_name, folder)
        if real and fake:
            matches.append((real, fake))
    expected = " or ".join(f"{r}/ and {f}/" for r, f in LABEL_FOLDERS)
    if not matches:
        raise LayoutError(f"{folder}: expected {expected}; {_found(dirs, files)}")
    if len(matches) > 1:
        raise LayoutError(f"{folder}: several real/fake folder pairs {matches}; keep one")
    real, fake = matches[0]
    out.stray(rel, [d for d in dirs if d not in (real, fake)], files, f"{real}/ and {fake}/")
    gen = generator or _generator_name(folder)
    out.leaf(folder / real, _join(rel, real), 0, gen)
    out.leaf(folder / fake, _join(rel, fake), 1, gen)
    return out.result(root)


# ---------------------------------------------------------------------------------------------------------
# A manifest file


_LABEL_WORDS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "real": 0, "fake": 1}


def _row_ref(i: int, csv: bool) -> str:
    return f"row {i} (line {i + 2})" if csv else f"row {i}"


@register_layout("manifest")
def manifest(
    root: Path, *, split: str | None = None, pairs: object = None, generator: str | None = None
) -> LayoutResult:
    """A CSV or Parquet file with columns path, label, generator (extra columns are kept).

    label is 0/1 or real/fake (any case). Relative paths are relative to the manifest's folder, which becomes
    the result's root; absolute paths stay absolute. Rows are taken as listed: no extension filter and no
    existence check (the extraction step reports files it cannot read). A (generator, path) listed twice is an
    error; the same path under two generators is allowed (shared reals).
    """
    _reject("manifest", root, split=split, pairs=pairs, generator=generator)
    if not root.is_file():
        raise LayoutError(f"{root}: manifest file not found (expected a .csv or .parquet file)")
    suffix = root.suffix.lower()
    csv = suffix == ".csv"
    try:
        if csv:
            df = pd.read_csv(
                root, dtype={"path": str, "generator": str, "label": str}, keep_default_na=False, na_values=[""]
            )
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(root)
        else:
            raise LayoutError(f"{root}: a manifest must be a .csv or .parquet file, got {suffix or 'no extension'!r}")
    except LayoutError:
        raise
    except Exception as exc:  # pandas/pyarrow raise several unrelated types for a damaged file
        raise LayoutError(f"{root}: cannot read manifest: {exc}") from exc
    missing = [c for c in ("path", "label", "generator") if c not in df.columns]
    if missing:
        raise LayoutError(f"{root}: missing column(s) {missing}; found {list(df.columns)}")
    if not len(df):
        raise LayoutError(f"{root}: the manifest has no rows")
    for col in ("path", "generator"):
        values = df[col]
        bad = (values.isna() | (values.astype(str).str.strip() == "")).to_numpy()
        if bad.any():
            first = int(np.argmax(bad))
            raise LayoutError(
                f"{root}: column {col!r} is empty in {int(bad.sum())} row(s), first at {_row_ref(first, csv)}"
            )

    raw = df["label"]
    if raw.dtype.kind == "b":
        labels = pd.Series(np.nan, index=raw.index)  # True/False is not a label: which one is fake?
    elif raw.dtype.kind in "iuf":
        labels = raw.where(raw.isin([0, 1]))
    else:
        labels = raw.astype(str).str.strip().str.lower().map(_LABEL_WORDS)
    bad = labels.isna().to_numpy()
    if bad.any():
        first = int(np.argmax(bad))
        raise LayoutError(
            f"{root}: column 'label' must be 0/1 or real/fake; {int(bad.sum())} row(s) are not, first at "
            f"{_row_ref(first, csv)}: {raw.iloc[first]!r}"
        )
    df = df.copy()
    df["label"] = labels.astype(np.int64)
    df["path"] = df["path"].astype(str)
    df["generator"] = df["generator"].astype(str)
    key = df["generator"] + "\0" + df["path"]
    dup = key.duplicated(keep="first").to_numpy()
    if dup.any():
        again = int(np.argmax(dup))
        first = int(np.argmax((key == key.iat[again]).to_numpy()))
        raise LayoutError(
            f"{root}: path {df['path'].iat[again]!r} is listed twice for generator "
            f"{df['generator'].iat[again]!r}, at {_row_ref(first, csv)} and {_row_ref(again, csv)}"
        )
    columns = ["path", "label", "generator"] + [c for c in df.columns if c not in ("path", "label", "generator")]
    ignored = pd.DataFrame({"path": pd.Series(dtype=object), "reason": pd.Series(dtype=object)})
    return LayoutResult(root=root.parent, samples=_sorted(df[columns]), ignored=ignored)
