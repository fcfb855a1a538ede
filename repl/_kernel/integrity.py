"""Snapshot and repair of the kernel's own code paths, between cells.

Why: model code that owns the kernel can, in pure Python, rebind what the kernel's loop uses on
later cells: a module global (`send_done`), a method on the Kernel instance (`run`), a closure
cell of `FINAL_VAR`, a builtin (`exec`), `json.dumps`. Each would forge every later cell's
`prompt`, answer or reply. Before every cell and before every reply the loop checks these
bindings against a snapshot taken before any model code ran, puts back what changed and says so
(`tampered` in the reply; the parent then records `prompt_integrity="violated"`).

This is NOT a guarantee (docs/SANDBOX.md): a thread that keeps re-patching, or code that
corrupts the interpreter, wins a race against any in-kernel check. It makes the cheap attacks
loud instead of silent. `intact` and `restore` take every tool they use as an argument: their
own module globals could be the ones that were patched.
"""
from __future__ import annotations

import itertools
import operator
import types

FunctionType = types.FunctionType
# operator.call is 3.11+; the fallback is a plain function (its code cannot be swapped: the hook refuses)
_call = getattr(operator, "call", None) or (lambda f, arg: f(arg))
CHECK_TOOLS = (all, map, operator.is_, operator.eq, _call, vars, len, operator.attrgetter("cell_contents"),
               operator.attrgetter("__defaults__"), operator.attrgetter("__kwdefaults__"), itertools.chain.from_iterable, operator.methodcaller("values"))
FIX_TOOLS = (vars, len, type.__setattr__, type.__delattr__, object.__setattr__, zip, list)


def _fn_entry(fn) -> tuple:
    cells = fn.__closure__ or ()
    return ("fn", fn, fn.__defaults__, fn.__kwdefaults__, cells, tuple(c.cell_contents for c in cells))


def take(modules: list, classes: list, instances: list, functions: list, strict_modules: list) -> tuple:
    """An immutable snapshot. modules: a module, a dict, or (module, names the loop looks up); instances: (object, attribute names that must keep their object);
    strict_modules: modules whose keys must not grow either (a name added to the kernel's own
    module globals would shadow a builtin it calls)."""
    out: list[tuple] = []
    seen_fn: set[int] = set()
    fns = list(functions)
    strict_ids = {id(m) for m in strict_modules}
    for item in modules:
        mod, names = item if isinstance(item, tuple) else (item, None)
        d = mod if isinstance(mod, dict) else vars(mod)
        strict = id(mod) in strict_ids
        keys = tuple(k for k in (names or tuple(d)) if k in d)
        # strict: the size is checked and names added later are removed (all names known now kept)
        out.append(("dict", d, keys, tuple(d[k] for k in keys), len(d) if strict else -1,
                    frozenset(d) if strict else frozenset()))
    for cls in classes:
        d = vars(cls)
        keys = tuple(d)
        out.append(("class", cls, keys, tuple(d[k] for k in keys), len(d), frozenset(keys)))
    for obj, names in instances:
        d = vars(obj)
        keys = tuple(k for k in (names or tuple(d)) if k in d)
        out.append(("inst", obj, d, keys, tuple(d[k] for k in keys)))
    for fn in fns:
        if id(fn) not in seen_fn:
            seen_fn.add(id(fn))
            out.append(_fn_entry(fn))
    return tuple(out)


def flatten(snap: tuple) -> tuple:
    """The snapshot as flat tuples, so `intact` is a few C-level passes instead of a Python loop.

    A dict snapshotted whole (the kernel's own modules, its classes) is checked through its values
    in order (cheap: no hashing); one snapshotted by name through `get`."""
    whole, whole_ids = [], []
    getters, keys, vals, sized, sizes, objs, dicts, fns, defaults, kwdefaults, cells, contents = ([] for _ in range(12))
    for entry in snap:
        kind = entry[0]
        if kind in ("dict", "class"):
            _, target, ks, vs, n, _known = entry
            d = target if kind == "dict" else vars(target)
            if n >= 0 and len(ks) == n and tuple(d) == ks:
                whole.append(d)
                whole_ids += vs  # all values of the whole dicts, in order (`is` against a live chain)
                sized.append(d)
                sizes.append(n)
                continue
            getters += [d.get] * len(ks)
            keys += ks
            vals += vs
            if n >= 0:
                sized.append(d)
                sizes.append(n)
        elif kind == "inst":
            _, obj, d, ks, vs = entry
            objs.append(obj)
            dicts.append(d)
            getters += [d.get] * len(ks)
            keys += ks
            vals += vs
        else:
            _, fn, dflt, kwdflt, cs, cvs = entry
            fns.append(fn)
            defaults.append(dflt)
            kwdefaults.append(kwdflt)
            cells += cs
            contents += cvs
    return tuple(map(tuple, (getters, keys, vals, sized, sizes, objs, dicts, fns, defaults, kwdefaults, cells,
                             contents, whole, whole_ids)))


def intact(flat: tuple, all_, map_, is_, eq, call, vars_, len_, get_contents, get_defaults, get_kwdefaults,
           chain, values) -> bool:
    """True when every binding in the snapshot is still the same object."""
    getters, keys, vals, sized, sizes, objs, dicts, fns, defaults, kwdefaults, cells, contents, whole, whole_ids = flat
    # a whole dict: the same size and the same value objects in the same order, so a key added,
    # removed or rebound shows (insertion order is kept, a re-added key moves to the end)
    return (all_(map_(eq, map_(len_, sized), sizes))
            and all_(map_(is_, chain(map_(values, whole)), whole_ids))
            and all_(map_(is_, map_(call, getters, keys), vals))
            and all_(map_(is_, map_(vars_, objs), dicts))
            and all_(map_(is_, map_(get_defaults, fns), defaults))
            and all_(map_(is_, map_(get_kwdefaults, fns), kwdefaults))
            and all_(map_(is_, map_(get_contents, cells), contents)))


def restore(snap: tuple, vars_, len_, type_setattr, type_delattr, obj_setattr, zip_, list_) -> None:
    """Put every binding back (and drop names added to strict dicts and to classes)."""
    for entry in snap:
        kind = entry[0]
        if kind == "dict":
            _, d, keys, vals, n, known = entry
            for k, v in zip_(keys, vals):
                if d.get(k) is not v:
                    d[k] = v
            if n >= 0 and len_(d) != n:
                for k in list_(d):
                    if k not in known:
                        del d[k]
        elif kind == "class":
            _, cls, keys, vals, n, known = entry
            d = vars_(cls)
            for k, v in zip_(keys, vals):
                if d.get(k) is not v:
                    type_setattr(cls, k, v)
            if len_(d) != n:
                for k in list_(d):
                    if k not in known:
                        type_delattr(cls, k)
        elif kind == "inst":
            _, obj, d, keys, vals = entry
            if vars_(obj) is not d:
                obj_setattr(obj, "__dict__", d)
            for k, v in zip_(keys, vals):
                if d.get(k) is not v:
                    d[k] = v
        else:
            _, fn, defaults, kwdefaults, cells, contents = entry
            fn.__defaults__ = defaults
            fn.__kwdefaults__ = kwdefaults
            for cell, value in zip_(cells, contents):
                if cell.cell_contents is not value:
                    cell.cell_contents = value
