"""Writing safetensors files as a stream, hashed while they are written.

The caller produces one tensor's bytes at a time, in the library's order (``safetensors.library_order``);
a writer thread writes each buffer and a hasher thread feeds it to the hashes that want it while the
caller computes the next (file writes and sha256 release the GIL, so they run on other cores). Each
thread holds one buffer and has one waiting, so memory stays within a few modules' tensors however large
the file (``benchmarks/lora_bench.py`` measures it). Nothing is read back: the whole-file sha256 and
musubi-tuner's ``sshs_model_hash``/``sshs_legacy_hash`` come from the bytes as they go out. The format
itself (dtypes, header layout, reading) is ``kohyawan.files.safetensors``; see docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from kohyawan.files.safetensors import Header, OutSpec, encode_header, header_bytes, library_order, placeholder

Buffer = Any  # bytes, memoryview, a C-contiguous numpy array: whatever memoryview() takes
Late = Mapping[str, Callable[[], str]]
SSHS_MODEL, SSHS_LEGACY = "sshs_model_hash", "sshs_legacy_hash"
_LEGACY_OFFSET, _LEGACY_LEN = 0x100000, 0x10000


@dataclass(frozen=True)
class Written:
    path: Path
    bytes: int
    sha256: str | None  # of the whole file, when it was asked for


class MusubiHashes:
    """musubi-tuner's ``sshs_model_hash`` and ``sshs_legacy_hash`` of a file being streamed.

    musubi serialises the tensors with only the ``ss_*`` metadata and hashes that: the model hash is the
    sha256 of its data section (the same bytes as in the real file), the legacy hash the first 8 hex digits
    of the sha256 of its 64 KiB at 1 MiB (header bytes included if the window reaches them).
    """

    def __init__(self, ordered: list[OutSpec], metadata: Mapping[str, str] | None):
        ss_only = {k: v for k, v in (metadata or {}).items() if k.startswith("ss_")}
        raw = header_bytes(ordered, ss_only)
        self._model = hashlib.sha256()
        self._window = bytearray()
        self._at = 0  # position in musubi's serialisation
        self._take(struct.pack("<Q", len(raw)) + raw)

    def _take(self, data) -> None:
        lo, hi = max(_LEGACY_OFFSET, self._at), min(_LEGACY_OFFSET + _LEGACY_LEN, self._at + len(data))
        if lo < hi:
            self._window.extend(memoryview(data)[lo - self._at:hi - self._at])
        self._at += len(data)

    def update(self, data) -> None:
        self._model.update(data)
        self._take(data)

    def model(self) -> str:
        return self._model.hexdigest()

    def legacy(self) -> str:
        return hashlib.sha256(bytes(self._window)).hexdigest()[:8]

    @classmethod
    def legacy_of(cls, ordered: list[OutSpec], metadata: Mapping[str, str] | None,
                  tensor: Callable[[str], Buffer]) -> str:
        """The legacy hash alone: only the tensors under its 64 KiB window are asked for."""
        h = cls(ordered, metadata)
        for spec in ordered:
            if h._at + spec.nbytes > _LEGACY_OFFSET:
                h._take(memoryview(tensor(spec.name)).cast("B"))
            else:
                h._at += spec.nbytes
            if h._at >= _LEGACY_OFFSET + _LEGACY_LEN:
                break
        return h.legacy()


_WRITE_BEHIND = 32 << 20


class _Worker:
    """A thread that applies ``work`` to each buffer put to it, in order, while the caller goes on."""

    def __init__(self, work: Callable[[Buffer, bool], None], name: str, depth: int = 1):
        self._work = work
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is None:  # after an error keep draining, so the producer never blocks
                try:
                    self._work(*item)
                except BaseException as exc:  # noqa: BLE001  (re-raised in the caller's thread)
                    self.error = exc

    def put(self, buf: Buffer, is_data: bool) -> None:
        self._queue.put((buf, is_data))

    def join(self) -> None:
        self._queue.put(None)
        self._thread.join()


class _Sink:
    """Two threads: one writes the buffers to the file, one feeds them to the hashes, while the caller
    produces the next (each works on one buffer and has one waiting).

    With ``write_behind`` every 32 MiB written is handed to the disk at once (``POSIX_FADV_DONTNEED``
    starts its writeback), so the final fsync finds little left to do and a large output does not trip
    the kernel's dirty-page throttle.
    """

    def __init__(self, fh, *, data: MusubiHashes | None = None, whole=None, write_behind: bool = False):
        self._fh, self._data, self._whole = fh, data, whole
        self._behind = write_behind and fh is not None and hasattr(os, "posix_fadvise")
        self._written = self._flushed = 0
        self._workers = ([_Worker(self._write, "safetensors-writer")] if fh is not None else []) + \
            ([_Worker(self._hash, "safetensors-hasher")] if data is not None or whole is not None else [])

    def _write(self, buf, _is_data: bool) -> None:
        self._fh.write(buf)
        self._written += len(buf)
        if self._behind and self._written - self._flushed >= _WRITE_BEHIND:
            os.posix_fadvise(self._fh.fileno(), self._flushed, self._written - self._flushed, os.POSIX_FADV_DONTNEED)
            self._flushed = self._written

    def _hash(self, buf, is_data: bool) -> None:
        if self._whole is not None:
            self._whole.update(buf)
        if is_data and self._data is not None:
            self._data.update(buf)

    def put(self, buf: Buffer, *, is_data: bool = True) -> None:
        self._raise()
        for w in self._workers:
            w.put(buf, is_data)

    def _raise(self) -> None:
        for w in self._workers:
            if w.error is not None:
                raise w.error

    def close(self, *, check: bool = True) -> None:
        for w in self._workers:
            w.join()
        if check:
            self._raise()


@contextmanager
def _sinking(fh, **options) -> Iterator[_Sink]:
    sink = _Sink(fh, **options)
    try:
        yield sink
    except BaseException:
        sink.close(check=False)
        raise
    sink.close()


@contextmanager
def _target(path: Path, in_place: bool, fsync: bool = False):
    """The file to write: ``path`` itself (fsynced only if asked), or a temporary renamed over it."""
    if in_place:
        with open(path, "wb") as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        return
    from kohyawan.files import atomic

    with atomic.replacing(path) as fh:
        yield fh


def _check_late(header: bytes, late: Late) -> None:
    for token in late:
        if header.count(token.encode()) != 1:
            raise RuntimeError(f"placeholder {token!r} must appear exactly once in the header")


def _patch_late(fh, header: bytes, late: Late) -> None:
    for token, final in late.items():
        value = final().encode()
        if len(value) != len(token.encode()):
            raise RuntimeError(f"late value {value!r} does not fit placeholder {token!r}")
        fh.seek(8 + header.index(token.encode()))
        fh.write(value)


def write_stream(path: Path, specs: Iterable[OutSpec], metadata: Mapping[str, str] | None,
                 produce: Callable[[OutSpec], Buffer], *, musubi_hashes: bool = True, late: Late | None = None,
                 in_place: bool = False, file_hash: bool = False) -> Written:
    """Write a safetensors file, asking ``produce`` for each tensor's bytes (any contiguous buffer) in
    file (library) order.

    With ``musubi_hashes`` the file carries ``sshs_model_hash``/``sshs_legacy_hash`` computed from the
    bytes as they are written. ``late`` maps placeholders (see ``safetensors.placeholder``) in metadata
    values to functions giving their final text, of the same width, once every tensor is written: the
    header is patched before the rename. ``file_hash`` asks for the whole file's sha256, which needs the
    final header first: no late values then (``musubi_hashes_of`` computes musubi's hashes beforehand).
    The file is written atomically (``kohyawan.files.atomic``), or with ``in_place`` straight to ``path``
    without fsync, as the real trainer saves (a crash mid-save leaves a partial file).
    """
    path = Path(path)
    ordered = library_order(specs)
    meta = None if metadata is None else {str(k): str(v) for k, v in metadata.items()}
    late = dict(late or {})
    hashes = None
    if musubi_hashes:
        meta = dict(meta or {})
        hashes = MusubiHashes(ordered, meta)
        meta[SSHS_MODEL] = placeholder(SSHS_MODEL, 64)
        meta[SSHS_LEGACY] = placeholder("legacy", 8)
        late.update({meta[SSHS_MODEL]: hashes.model, meta[SSHS_LEGACY]: hashes.legacy})
    if file_hash and late:
        raise ValueError("a whole-file hash needs the final header: no late metadata values")
    header = header_bytes(ordered, meta)
    _check_late(header, late)
    whole = hashlib.sha256() if file_hash else None
    with _target(path, in_place) as fh:
        with _sinking(fh, data=hashes, whole=whole, write_behind=not in_place) as sink:
            sink.put(struct.pack("<Q", len(header)) + header, is_data=False)
            for spec in ordered:
                sink.put(_checked(spec, produce(spec)))
        _patch_late(fh, header, late)
    return Written(path, 8 + len(header) + sum(s.nbytes for s in ordered), whole.hexdigest() if whole else None)


def _checked(spec: OutSpec, data: Buffer) -> memoryview:
    view = memoryview(data).cast("B")
    if len(view) != spec.nbytes:
        raise RuntimeError(f"{spec.name}: produced {len(view)} bytes, expected {spec.nbytes}")
    return view


def musubi_hashes_of(specs: Iterable[OutSpec], metadata: Mapping[str, str] | None,
                     produce: Callable[[OutSpec], Buffer]) -> dict[str, str]:
    """{sshs_model_hash, sshs_legacy_hash} of the tensors ``produce`` gives, without writing anything:
    for a file whose header must be final before it is written (one hashed as a whole while written)."""
    ordered = library_order(specs)
    hashes = MusubiHashes(ordered, metadata)
    with _sinking(None, data=hashes) as sink:
        for spec in ordered:
            sink.put(_checked(spec, produce(spec)))
    return {SSHS_MODEL: hashes.model(), SSHS_LEGACY: hashes.legacy()}


@contextmanager
def mapped(path: Path) -> Iterator[memoryview]:
    """A file's bytes straight from the page cache (read-only mmap): slices cost no copy."""
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mm)
        try:
            yield view
        finally:
            view.release()
            try:
                mm.close()
            except BufferError:  # a slice still alive (an exception's traceback): the map goes with it
                pass


def copy_with_metadata(src: Header, dst: Path, metadata: Mapping[str, str], *, in_place: bool = False) -> Written:
    """``src`` with a new header (``metadata`` replaces its metadata) and its tensor bytes copied as they
    are, in their order, straight from the page cache, hashed while written. If ``src`` carries a
    ``sshs_legacy_hash`` it is recomputed for the new ``ss_*`` metadata (the model hash cannot change)."""
    entries = sorted(src.tensors.values(), key=lambda t: t.start)
    meta = {str(k): str(v) for k, v in metadata.items()}
    chunk = 4 << 20
    with mapped(src.path) as view:
        if SSHS_LEGACY in meta:
            ordered = library_order(OutSpec(t.name, t.dtype, t.shape) for t in entries)
            meta[SSHS_LEGACY] = MusubiHashes.legacy_of(ordered, meta, lambda n: view[slice(*src.span(n))])
        header = encode_header(entries, meta)
        whole = hashlib.sha256()
        with _target(Path(dst), in_place) as fh, _sinking(fh, whole=whole, write_behind=not in_place) as sink:
            sink.put(struct.pack("<Q", len(header)) + header, is_data=False)
            for at in range(src.data_start, src.file_size, chunk):
                sink.put(view[at:min(at + chunk, src.file_size)])
    return Written(Path(dst), 8 + len(header) + src.file_size - src.data_start, whole.hexdigest())


def copy_file(src: Path, dst: Path, *, atomic: bool = True) -> Written:
    """A byte-for-byte copy, hashed from the bytes as they are written (one read, one write), fsynced;
    ``atomic=False`` writes ``dst`` itself (a temporary name the caller renames)."""
    chunk = 4 << 20
    whole = hashlib.sha256()
    with mapped(Path(src)) as view, _target(Path(dst), not atomic, fsync=True) as fh, \
            _sinking(fh, whole=whole, write_behind=True) as sink:
        for at in range(0, len(view), chunk):
            sink.put(view[at:at + chunk])
        size = len(view)
    return Written(Path(dst), size, whole.hexdigest())


def write_sparse(path: Path, specs: Iterable[OutSpec], metadata: Mapping[str, str] | None = None) -> Path:
    """The header for ``specs``, then the file extended to its full length without writing data: a hole
    the filesystem allocates no blocks for (stand-ins for multi-gigabyte model files). Atomic."""
    from kohyawan.files import atomic

    path = Path(path)
    ordered = library_order(specs)
    header = header_bytes(ordered, metadata)
    with atomic.replacing(path) as fh:
        fh.write(struct.pack("<Q", len(header)))
        fh.write(header)
        fh.truncate(8 + len(header) + sum(s.nbytes for s in ordered))
    return path
