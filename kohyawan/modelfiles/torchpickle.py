"""Read tensor names, dtypes and shapes from a ``torch.save`` (.pth) file without unpickling it.

musubi-tuner's own docs point at ``Wan2.1_VAE.pth`` and ``models_t5_umt5-xxl-enc-bf16.pth``, so the
checks must see into them. Unpickling would run arbitrary code and need torch; instead the ``data.pkl``
member of the zip is walked opcode by opcode (``pickletools.genops`` only parses) on a small stack
machine that knows the handful of globals torch writes: ``_rebuild_tensor_v2``, ``_rebuild_parameter``,
``OrderedDict`` and the typed storage classes. Anything else becomes an opaque value.
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


def looks_like_torch_zip(path: os.PathLike | str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False  # read_header reports the real problem with one clear line


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


def identify_pth(path: os.PathLike | str):
    from kohyawan.modelfiles.identify import classify

    tensors = read_pth(path)
    return classify(os.fspath(path), {n: t.shape for n, t in tensors.items()},
                    {n: t.dtype for n, t in tensors.items()}, {}, file_size=os.stat(path).st_size,
                    file_format="torch-pickle")


def _run(data: bytes) -> Any:
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            return stack.pop()
        if name == "MARK":
            stack.append(_MARK)
        elif name in ("EMPTY_DICT",):
            stack.append({})
        elif name in ("EMPTY_LIST",):
            stack.append([])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("EMPTY_SET",):
            stack.append(set())
        elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BINSTRING", "SHORT_BINSTRING",
                      "STRING", "BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT",
                      "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"):
            stack.append(arg)
        elif name == "NONE":
            stack.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            stack.append(name == "NEWTRUE")
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            stack.append(memo[int(arg)])
        elif name == "GLOBAL":
            module, _, attr = arg.partition(" ")
            stack.append(_Global(module, attr))
        elif name == "STACK_GLOBAL":
            attr = stack.pop()
            stack.append(_Global(stack.pop(), attr))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}[name]
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name in ("TUPLE", "LIST", "DICT", "APPENDS", "SETITEMS", "ADDITEMS", "FROZENSET"):
            i = len(stack) - 1 - stack[::-1].index(_MARK)
            items = stack[i + 1:]
            del stack[i:]
            if name == "TUPLE":
                stack.append(tuple(items))
            elif name == "LIST":
                stack.append(list(items))
            elif name == "DICT":
                stack.append(dict(zip(items[::2], items[1::2])))
            elif name == "APPENDS":
                if isinstance(stack[-1], list):
                    stack[-1].extend(items)
            elif name == "SETITEMS":
                if isinstance(stack[-1], dict):
                    for k, v in zip(items[::2], items[1::2]):
                        _setitem(stack[-1], k, v)
            elif name == "FROZENSET":
                stack.append(frozenset())
        elif name == "APPEND":
            v = stack.pop()
            if isinstance(stack[-1], list):
                stack[-1].append(v)
        elif name == "SETITEM":
            v, k = stack.pop(), stack.pop()
            if isinstance(stack[-1], dict):
                _setitem(stack[-1], k, v)
        elif name in ("BINPERSID", "PERSID"):
            pid = stack.pop() if name == "BINPERSID" else arg
            stack.append(("persistent", pid))
        elif name in ("REDUCE", "NEWOBJ"):
            args = stack.pop()
            func = stack.pop()
            stack.append(_reduce(func, args))
        elif name == "BUILD":
            stack.pop()  # state of an object we do not materialise
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            i = len(stack) - 1 - stack[::-1].index(_MARK)
            del stack[i:]
        elif name == "DUP":
            stack.append(stack[-1])
        else:
            raise ValueError(f"unsupported pickle opcode {name}")
    raise ValueError("pickle without STOP")


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
