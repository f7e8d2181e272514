"""Read tensor names, dtypes and shapes from a ``torch.save`` (.pth) file without unpickling it.

musubi-tuner's own docs point at ``Wan2.1_VAE.pth`` and ``models_t5_umt5-xxl-enc-bf16.pth``, so the
checks must see into them. Unpickling would run arbitrary code and need torch; instead the ``data.pkl``
member of the zip is walked opcode by opcode (``pickletools.genops`` only parses) on a small stack
machine that knows the handful of globals torch writes: ``_rebuild_tensor_v2``, ``_rebuild_parameter``,
``OrderedDict`` and the typed storage classes. Anything else becomes an opaque value. What the tensors
mean is ``identify``'s business. Design: docs/architecture.md.
"""

from __future__ import annotations

import os
import pickletools
import zipfile
from typing import Any

from kohyawan.errors import ModelFileError
from kohyawan.modelfiles.header import shown

MAX_PICKLE_BYTES = 64 * 1024 * 1024

STORAGE_DTYPES = {
    "BFloat16Storage": "BF16", "HalfStorage": "F16", "FloatStorage": "F32", "DoubleStorage": "F64",
    "Float8_e4m3fnStorage": "F8_E4M3", "Float8_e5m2Storage": "F8_E5M2", "ByteStorage": "U8",
    "CharStorage": "I8", "ShortStorage": "I16", "IntStorage": "I32", "LongStorage": "I64", "BoolStorage": "BOOL",
}


class _Global:
    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class _Call:
    def __init__(self, func: Any, args: Any):
        self.func, self.args = func, args


class _Tensor:
    def __init__(self, dtype: str, shape: tuple[int, ...]):
        self.dtype, self.shape = dtype, shape


_MARK = object()


def read_pth(path: os.PathLike | str) -> dict[str, _Tensor]:
    where = shown(path)
    try:
        with zipfile.ZipFile(path) as zf:
            member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
            if member is None:
                raise ModelFileError(f"{where}: a zip file, but not one written by torch.save")
            if zf.getinfo(member).file_size > MAX_PICKLE_BYTES:
                raise ModelFileError(f"{where}: its pickled index is implausibly large")
            data = zf.read(member)
    except zipfile.BadZipFile:
        raise ModelFileError(f"{where}: corrupt or truncated .pth file (bad zip)") from None
    except OSError as exc:
        raise ModelFileError(f"{where}: cannot read ({exc.strerror or exc})") from None
    try:
        root = _run(data)
    except Exception:  # any malformed pickle: report it, never crash
        raise ModelFileError(f"{where}: corrupt .pth file (its pickle cannot be parsed)") from None
    found = _largest_tensor_dict(root)
    if not found:
        raise ModelFileError(f"{where}: a torch file without a state dict of tensors")
    return found


def _run(data: bytes) -> Any:
    m = _Machine()
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "STOP":
            return m.stack.pop()
        if op.name in _SKIP:
            continue
        if op.name in _PUSH_ARG:
            m.stack.append(arg)
            continue
        handler = _OPS.get(op.name)
        if handler is None:
            raise ValueError(f"unsupported pickle opcode {op.name}")
        handler(m, op.name, arg)
    raise ValueError("pickle without STOP")


class _Machine:
    """The pickle stack machine's state: the stack (with marks) and the memo."""

    def __init__(self):
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}

    def pop_mark(self) -> list[Any]:
        """Everything above the topmost mark, which goes too."""
        i = len(self.stack) - 1 - self.stack[::-1].index(_MARK)
        items = self.stack[i + 1:]
        del self.stack[i:]
        return items

    def pop_n(self, n: int) -> tuple[Any, ...]:
        items = tuple(self.stack[-n:])
        del self.stack[-n:]
        return items


_SKIP = frozenset({"PROTO", "FRAME"})
# opcodes whose argument is the value they push
_PUSH_ARG = frozenset({"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BINSTRING", "SHORT_BINSTRING",
                       "STRING", "BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT",
                       "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"})
_CONSTANTS = {"NONE": lambda: None, "NEWTRUE": lambda: True, "NEWFALSE": lambda: False, "EMPTY_DICT": dict,
              "EMPTY_LIST": list, "EMPTY_TUPLE": tuple, "EMPTY_SET": set, "MARK": lambda: _MARK}
_TUPLE_SIZES = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}


def _constant(m: _Machine, name: str, _arg) -> None:
    m.stack.append(_CONSTANTS[name]())


def _put(m: _Machine, name: str, arg) -> None:
    m.memo[len(m.memo) if name == "MEMOIZE" else int(arg)] = m.stack[-1]


def _get(m: _Machine, _name: str, arg) -> None:
    m.stack.append(m.memo[int(arg)])


def _global(m: _Machine, name: str, arg) -> None:
    if name == "GLOBAL":
        module, _, attr = arg.partition(" ")
    else:  # STACK_GLOBAL
        module, attr = m.pop_n(2)
    m.stack.append(_Global(module, attr))


def _small_tuple(m: _Machine, name: str, _arg) -> None:
    m.stack.append(m.pop_n(_TUPLE_SIZES[name]))


def _marked(m: _Machine, name: str, _arg) -> None:
    """Opcodes that take everything above the topmost mark."""
    items = m.pop_mark()
    if name == "TUPLE":
        m.stack.append(tuple(items))
    elif name == "LIST":
        m.stack.append(list(items))
    elif name == "DICT":
        m.stack.append(dict(zip(items[::2], items[1::2])))
    elif name == "FROZENSET":
        m.stack.append(frozenset())
    elif name == "APPENDS" and isinstance(m.stack[-1], list):
        m.stack[-1].extend(items)
    elif name == "SETITEMS" and isinstance(m.stack[-1], dict):
        for k, v in zip(items[::2], items[1::2]):
            _setitem(m.stack[-1], k, v)
    # POP_MARK, and ADDITEMS on a set we do not model: the items are simply dropped


def _append(m: _Machine, _name: str, _arg) -> None:
    v = m.stack.pop()
    if isinstance(m.stack[-1], list):
        m.stack[-1].append(v)


def _setitem_op(m: _Machine, _name: str, _arg) -> None:
    k, v = m.pop_n(2)
    if isinstance(m.stack[-1], dict):
        _setitem(m.stack[-1], k, v)


def _persid(m: _Machine, name: str, arg) -> None:
    m.stack.append(("persistent", m.stack.pop() if name == "BINPERSID" else arg))


def _reduce_op(m: _Machine, _name: str, _arg) -> None:
    func, args = m.pop_n(2)
    m.stack.append(_reduce(func, args))


def _pop(m: _Machine, _name: str, _arg) -> None:
    m.stack.pop()  # POP, and BUILD: the state of an object we do not materialise


def _dup(m: _Machine, _name: str, _arg) -> None:
    m.stack.append(m.stack[-1])


_OPS = {
    **dict.fromkeys(_CONSTANTS, _constant),
    **dict.fromkeys(("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"), _put),
    **dict.fromkeys(("BINGET", "LONG_BINGET", "GET"), _get),
    **dict.fromkeys(("GLOBAL", "STACK_GLOBAL"), _global),
    **dict.fromkeys(_TUPLE_SIZES, _small_tuple),
    **dict.fromkeys(("TUPLE", "LIST", "DICT", "APPENDS", "SETITEMS", "ADDITEMS", "FROZENSET", "POP_MARK"), _marked),
    "APPEND": _append,
    "SETITEM": _setitem_op,
    **dict.fromkeys(("BINPERSID", "PERSID"), _persid),
    **dict.fromkeys(("REDUCE", "NEWOBJ"), _reduce_op),
    **dict.fromkeys(("BUILD", "POP"), _pop),
    "DUP": _dup,
}


def _setitem(d: dict, k: Any, v: Any) -> None:
    try:
        d[k] = v
    except TypeError:
        pass  # unhashable key of an object we do not model


def _reduce(func: Any, args: Any) -> Any:
    if isinstance(func, _Global):
        qual = f"{func.module}.{func.name}"
        if qual == "torch._utils._rebuild_tensor_v2" and isinstance(args, tuple) and len(args) >= 3:
            storage, size = args[0], args[2]
            dtype = "?"
            if isinstance(storage, tuple) and storage[:1] == ("persistent",):
                pid = storage[1]
                if isinstance(pid, tuple) and len(pid) >= 2 and isinstance(pid[1], _Global):
                    dtype = STORAGE_DTYPES.get(pid[1].name, pid[1].name)
            return _Tensor(dtype, tuple(int(x) for x in size))
        if qual == "torch._utils._rebuild_parameter" and isinstance(args, tuple) and args:
            return args[0]
        if qual == "collections.OrderedDict":
            return {}
    return _Call(func, args)


def _largest_tensor_dict(obj: Any, depth: int = 0) -> dict[str, _Tensor]:
    if depth > 4 or not isinstance(obj, dict):
        return {}
    own = {str(k): v for k, v in obj.items() if isinstance(v, _Tensor)}
    best = own
    for v in obj.values():
        sub = _largest_tensor_dict(v, depth + 1)
        if len(sub) > len(best):
            best = sub
    return best
