"""Built kernels kept on disk, so that building a layer again loads its
machine code instead of emitting and compiling it (about a second a layer).

An entry is keyed by everything that decides the machine code: the program
after the schedule and the passes (its full structure, constant values
included), the backend, the target (CPU, features, compiler command and
flags), the code generators (LLVM's version, the C compiler's version line)
and convgen itself (its version and a digest of its source and templates, so
that an edited checkout never loads code an older convgen emitted). It holds
what the backend emitted and the compiled image (LLVM's object code, or the
C shared object).

Where: $CONVGEN_CACHE_DIR if set, else the platform's user cache folder
(platformdirs: ~/.cache/convgen on Linux, ~/Library/Caches/convgen on macOS,
%LOCALAPPDATA%\\convgen\\Cache on Windows). CONVGEN_CACHE=off turns it off.
`convgen cache info` and `convgen cache clear` show and empty it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

_PACKAGE = Path(__file__).resolve().parent
_EMITTED, _IMAGE = "emitted.pickle", "image"


def location() -> Path | None:
    """The cache folder, or None where CONVGEN_CACHE turns the cache off."""
    if os.environ.get("CONVGEN_CACHE", "").strip().lower() in ("0", "off", "no", "false"):
        return None
    configured = os.environ.get("CONVGEN_CACHE_DIR", "").strip()
    if configured:
        return Path(configured)
    import platformdirs
    return Path(platformdirs.user_cache_dir("convgen", appauthor=False))


def key(program, backend: str, target) -> str:
    """The entry's name: a digest of everything that decides the machine code."""
    # every constant in full and every float exactly, so no two programs print alike
    with np.printoptions(threshold=sys.maxsize, floatmode="unique"):
        described = repr(program)
    digest = hashlib.sha256()
    generator = _cuda_generator() if backend == "cuda" else _generator(backend, target.cc)
    for part in (_convgen_digest(), generator, backend, repr(target), described):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class Entry:
    emitted: object   # what the backend's emit returned
    image: bytes      # the compiled code its restore loads


def get(name: str) -> Entry | None:
    """The entry called `name`, or None (no cache, no such entry, or one unreadable)."""
    folder = location()
    if folder is None:
        return None
    entry = folder / name[:2] / name
    try:
        emitted = pickle.loads((entry / _EMITTED).read_bytes())
        return Entry(emitted, (entry / _IMAGE).read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return None


def put(name: str, emitted, image: bytes) -> None:
    """Store an entry; a cache that cannot be written is skipped, never an error."""
    folder = location()
    if folder is None:
        return
    target = folder / name[:2] / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # written aside, then renamed into place: a reader never sees half an entry, and of two
        # processes storing the same entry one wins
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=target.parent))
        (staging / _EMITTED).write_bytes(pickle.dumps(emitted))
        (staging / _IMAGE).write_bytes(image)
        try:
            staging.rename(target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError:
        return


def info() -> tuple[Path | None, int, int]:
    """(folder, entries, bytes)."""
    folder = location()
    if folder is None or not folder.is_dir():
        return folder, 0, 0
    entries = [p for p in folder.glob("*/*") if p.is_dir() and not p.name.startswith(".")]
    size = sum(f.stat().st_size for p in entries for f in p.iterdir() if f.is_file())
    return folder, len(entries), size


def clear() -> tuple[Path | None, int]:
    """Remove every entry: (folder, entries removed)."""
    folder, count, _ = info()
    if folder is not None and folder.is_dir():
        for shard in folder.iterdir():
            if shard.is_dir() and len(shard.name) == 2:
                shutil.rmtree(shard, ignore_errors=True)
    return folder, count


@lru_cache(maxsize=None)
def _convgen_digest() -> str:
    """convgen's version and a digest of its modules and templates."""
    try:
        release = version("convgen")
    except PackageNotFoundError:
        release = "unknown"
    digest = hashlib.sha256(release.encode())
    from .codegen.render import TEMPLATE_DIRS
    files = sorted(_PACKAGE.rglob("*.py")) + sorted(f for d in TEMPLATE_DIRS if d.is_dir() for f in d.rglob("*")
                                                    if f.is_file())
    for path in files:
        digest.update(str(path.relative_to(path.parents[1])).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cuda_generator() -> str:
    """What builds a cuda kernel here: nvcc for a GPU, or the C++ compiler for the emulator."""
    from .codegen.cuda import runner
    where = runner()
    compiler = ("nvcc",) if where != "emulator" else tuple(shlex.split(os.environ.get("CXX", "c++")))
    return f"{where}: {_generator('cuda', compiler)}"


@lru_cache(maxsize=None)
def _generator(backend: str, cc: tuple[str, ...]) -> str:
    """The code generator's own version: LLVM's, or the C compiler's first line."""
    if backend == "llvm":
        import llvmlite
        import llvmlite.binding as llvm
        return f"llvmlite {llvmlite.__version__}, LLVM {'.'.join(map(str, llvm.llvm_version_info))}"
    try:
        result = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30)
        return result.stdout.splitlines()[0] if result.stdout else " ".join(cc)
    except (OSError, subprocess.SubprocessError):
        return " ".join(cc)
