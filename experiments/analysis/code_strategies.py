"""Which strategy did the controller use? Read off the AST of its code cells.

The labels describe *how the document was decomposed*, so a report can relate strategy to score:

* ``peek``       looked at the prompt: ``print(prompt[:2000])``, ``print(len(prompt))``, constant slices
                 of prompt-derived values (``lines[:20]``) outside loops and outside sub_call arguments,
                 printing a prompt-derived value.
* ``grep``       searched it in code: ``re.*`` on prompt-derived text, ``.find/.index/.count/.startswith`` on prompt-derived
                 values, ``'x' in prompt`` or ``'x' in line`` for a line taken from the prompt.
* ``chunk-map``  ``sub_call`` inside a loop or comprehension, any ``sub_call_batch``, or ``sub_call`` passed
                 as a value (``map(sub_call, ...)``, ``pool.submit(sub_call, ...)``).
* ``map-reduce`` chunk-map plus an aggregation of sub_call results: ``sum/max/min/sorted/Counter/...`` over
                 them, ``+=`` fed by them, or a ``sub_call`` whose input is built from earlier results.
* ``single-subcall`` sub_calls were written, none of them mapped over chunks.
* ``nested``     a sub_call ran as a nested RLM (from the trajectory, not the code).
* ``no-code``    the controller wrote no cell at all.
* ``unparseable`` a cell did not parse (``SyntaxError``); the other cells are still read.
* ``other``      code that matched none of the above.

Names are tracked across cells (the REPL keeps state): a name assigned from an expression that uses
``prompt`` is *prompt-derived*; one assigned from sub_call output is *result-derived*; a function whose
body calls ``sub_call`` counts as a sub_call itself at its call sites. This is a static reading: code
paths that never ran still count, and aliasing tricks (``f = globals()['sub_call']``) are missed.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any, Iterable

# Most elaborate decomposition first: the primary label is the first one present.
STRATEGY_PRECEDENCE: tuple[str, ...] = (
    "nested",
    "map-reduce",
    "chunk-map",
    "single-subcall",
    "grep",
    "peek",
    "other",
    "unparseable",
    "no-code",
)
NO_CONTROLLER = "no-controller"  # rows whose trajectory has no controller turns (baselines) or no trajectory

SUBCALL_NAMES = frozenset({"sub_call", "sub_call_batch"})
_AGG_FUNCS = frozenset(
    {"sum", "max", "min", "sorted", "Counter", "mean", "median", "mode", "any", "all", "set", "len", "fsum"}
)
_AGG_METHODS = frozenset({"most_common", "mean", "median", "update", "sum", "max", "min", "value_counts"})
_RE_METHODS = frozenset({"findall", "finditer", "search", "match", "fullmatch", "sub", "subn", "split"})
_STR_SEARCH = frozenset({"find", "rfind", "index", "rindex", "count", "startswith", "endswith"})
_COLLECT = frozenset({"append", "extend", "add", "insert", "update", "setdefault"})


@dataclass(frozen=True)
class StrategyResult:
    labels: tuple[str, ...]  # in precedence order
    primary: str

    @property
    def label_string(self) -> str:
        return ";".join(self.labels)


@dataclass
class _State:
    """What the REPL holds after the cells read so far."""

    prompt_names: set[str] = field(default_factory=lambda: {"prompt"})
    result_names: set[str] = field(default_factory=set)
    subcall_funcs: set[str] = field(default_factory=lambda: set(SUBCALL_NAMES))
    re_names: set[str] = field(default_factory=lambda: {"re"})  # `re`, `import re as r`, `from re import findall`
    labels: set[str] = field(default_factory=set)
    aggregates: bool = False


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _target_names(target: ast.AST) -> set[str]:
    """Names bound (or mutated, for ``x[i] = ..``/``x.a = ..``) by an assignment target."""
    out: set[str] = set()
    if isinstance(target, ast.Name):
        out.add(target.id)
    elif isinstance(target, (ast.Tuple, ast.List)):
        for elt in target.elts:
            out |= _target_names(elt)
    elif isinstance(target, ast.Starred):
        out |= _target_names(target.value)
    elif isinstance(target, (ast.Subscript, ast.Attribute)):
        base = target.value
        while isinstance(base, (ast.Subscript, ast.Attribute)):
            base = base.value
        if isinstance(base, ast.Name):
            out.add(base.id)
    return out


class _CellVisitor(ast.NodeVisitor):
    def __init__(self, st: _State):
        self.st = st
        self.loop_depth = 0
        self.func_depth = 0
        self.result_loops = 0  # loops iterating over sub_call results
        self.in_subcall_args = 0  # prompt[:500] handed to sub_call is a chunk, not a peek

    # -- taint helpers ------------------------------------------------------------------
    def uses_prompt(self, node: ast.AST) -> bool:
        return bool(_names(node) & self.st.prompt_names)

    def uses_results(self, node: ast.AST) -> bool:
        return bool(_names(node) & self.st.result_names) or self.has_subcall(node)

    def has_subcall(self, node: ast.AST) -> bool:
        return bool(_names(node) & self.st.subcall_funcs)

    def bind(self, targets: Iterable[ast.AST], value: ast.AST | None) -> None:
        if value is None:
            return
        names: set[str] = set()
        for t in targets:
            names |= _target_names(t)
        if self.uses_prompt(value):
            self.st.prompt_names |= names
        if self.uses_results(value):
            self.st.result_names |= names
        if isinstance(value, ast.Lambda) and self.has_subcall(value.body):
            self.st.subcall_funcs |= names
        if isinstance(value, ast.Call) and self._is_re_call(value, "compile"):
            self.st.re_names |= names  # a compiled pattern: pat.findall(...) is a regex search

    def _is_re_call(self, call: ast.Call, attr: str | None = None) -> bool:
        f = call.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in self.st.re_names:
            return attr is None or f.attr == attr
        if isinstance(f, ast.Name) and f.id in self.st.re_names and attr is None:
            return True  # `from re import findall`
        return False

    # -- scopes -------------------------------------------------------------------------
    def _loop(self, body_nodes: list[ast.AST], over_results: bool) -> None:
        self.loop_depth += 1
        self.result_loops += over_results
        for n in body_nodes:
            self.visit(n)
        self.loop_depth -= 1
        self.result_loops -= over_results

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        self.bind([node.target], node.iter)
        self._loop([*node.body, *node.orelse], self.uses_results(node.iter))

    visit_AsyncFor = visit_For  # type: ignore[assignment]

    def visit_While(self, node: ast.While) -> None:
        self._loop([node.test, *node.body, *node.orelse], False)

    def _comprehension(self, node: Any, elts: list[ast.AST]) -> None:
        over_results = False
        self.loop_depth += 1
        for gen in node.generators:
            self.visit(gen.iter)
            self.bind([gen.target], gen.iter)
            over_results |= self.uses_results(gen.iter)
            for cond in gen.ifs:
                self.visit(cond)
        self.result_loops += over_results
        for e in elts:
            self.visit(e)
        self.result_loops -= over_results
        self.loop_depth -= 1
        # `[x for x in results if ...]` handed to len()/sum() is judged at the enclosing call.

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_ListComp  # type: ignore[assignment]
    visit_GeneratorExp = visit_ListComp  # type: ignore[assignment]

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node, [node.key, node.value])

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        # Loops inside the function count from zero: a call site outside any loop is a single call.
        outer = self.loop_depth
        self.loop_depth = 0
        self.func_depth += 1
        for stmt in node.body:
            self.visit(stmt)
        self.func_depth -= 1
        self.loop_depth = outer
        if self.uses_results(ast.Module(body=node.body, type_ignores=[])):
            self.st.result_names.add(node.name)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.func_depth += 1
        self.visit(node.body)
        self.func_depth -= 1

    # -- bindings -----------------------------------------------------------------------
    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        self.bind(node.targets, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self.bind([node.target], node.value)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.bind([node.target], node.value)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        if self.uses_results(node.value) or self.result_loops:
            self.st.aggregates = True  # total += int(answer), or count += 1 in a loop over answers
        self.bind([node.target], node.value)

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name == "re":
                self.st.re_names.add(a.asname or "re")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module == "re":
            self.st.re_names |= {a.asname or a.name for a in node.names}

    # -- expressions --------------------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        # sub_call handed over as a value (map(sub_call, chunks), pool.submit(sub_call, c, q)).
        if node.id in self.st.subcall_funcs and isinstance(node.ctx, ast.Load):
            self.st.labels.add("chunk-map")

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        st = self.st
        fname = f.id if isinstance(f, ast.Name) else None
        attr = f.attr if isinstance(f, ast.Attribute) else None
        args = [*node.args, *(k.value for k in node.keywords)]
        arg_mod = ast.Module(body=[ast.Expr(a) for a in args], type_ignores=[])

        if fname in st.subcall_funcs:
            if fname == "sub_call_batch" or self.loop_depth > 0:
                st.labels.add("chunk-map")
            elif self.func_depth == 0:
                st.labels.add("single-subcall")
            if any(_names(a) & st.result_names for a in args):
                st.aggregates = True  # a sub_call reading earlier answers: an LM reduce
            self.in_subcall_args += 1
            for a in args:
                self.visit(a)
            self.in_subcall_args -= 1
            return

        if any(isinstance(a, ast.Lambda) and self.has_subcall(a.body) for a in args):
            st.labels.add("chunk-map")  # map(lambda c: sub_call(c, q), chunks)
        if fname in _AGG_FUNCS or attr in _AGG_METHODS:
            if any(self.uses_results(a) and not (fname == "len" and isinstance(a, ast.Name)) for a in args):
                st.aggregates = True
            if attr in _AGG_METHODS and isinstance(f, ast.Attribute) and self.uses_results(f.value):
                st.aggregates = True
        if attr in _COLLECT and isinstance(f, ast.Attribute) and any(self.uses_results(a) for a in args):
            st.result_names |= _target_names(f)  # answers.append(sub_call(...))
        if attr in _COLLECT and isinstance(f, ast.Attribute) and any(self.uses_prompt(a) for a in args):
            st.prompt_names |= _target_names(f)  # chunks.append(prompt[i:j])

        # A regex counts as grep when it reads the prompt; parsing worker replies with re is not searching.
        if self._is_re_call(node) and self.uses_prompt(arg_mod):
            st.labels.add("grep")
        elif (attr in _RE_METHODS and isinstance(f, ast.Attribute) and _names(f.value) & st.re_names
              and self.uses_prompt(arg_mod)):
            st.labels.add("grep")
        elif attr in _STR_SEARCH and isinstance(f, ast.Attribute) and self.uses_prompt(f.value):
            st.labels.add("grep")

        if fname == "print" and self.uses_prompt(arg_mod) and not self.uses_results(arg_mod):
            st.labels.add("peek")
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        sl = node.slice
        if isinstance(sl, ast.Slice) and self.uses_prompt(node.value) and not (self.loop_depth or self.in_subcall_args):
            bounds = [b for b in (sl.lower, sl.upper) if b is not None]
            if all(_is_constant(b) for b in bounds):
                self.st.labels.add("peek")
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        for op, right in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)) and self.uses_prompt(right):
                self.st.labels.add("grep")
        self.generic_visit(node)


def _is_constant(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant):
        return True
    if isinstance(node, ast.BinOp):
        return _is_constant(node.left) and _is_constant(node.right)
    return False


def _function_defs(tree: ast.AST, st: _State) -> None:
    """Add functions that call sub_call (directly or through another such function) to subcall_funcs."""
    defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    changed = True
    while changed:
        changed = False
        for d in defs:
            if d.name in st.subcall_funcs:
                continue
            body_names = set().union(*(_names(s) for s in d.body)) if d.body else set()
            if body_names & st.subcall_funcs:
                st.subcall_funcs.add(d.name)
                changed = True


def classify_cells(codes: Iterable[str], *, nested: bool = False) -> StrategyResult:
    """Strategy labels for one controller's cells, in execution order (the REPL's state carries over)."""
    codes = list(codes)
    st = _State()
    for code in codes:
        try:
            tree = ast.parse(code)
        except (SyntaxError, ValueError):  # ValueError: source with NUL bytes
            st.labels.add("unparseable")
            continue
        _function_defs(tree, st)
        _CellVisitor(st).visit(tree)
    labels = set(st.labels)
    if "chunk-map" in labels:
        labels.discard("single-subcall")  # a reduce call after a map is part of the map-reduce
        if st.aggregates:
            labels.add("map-reduce")
    if nested:
        labels.add("nested")
    if not codes:
        labels.add("no-code")
    elif not labels - {"unparseable"} and any(_parses(c) for c in codes):
        labels.add("other")
    ordered = tuple(lab for lab in STRATEGY_PRECEDENCE if lab in labels)
    return StrategyResult(labels=ordered, primary=ordered[0] if ordered else "other")


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def classify_trajectory(traj: Any) -> StrategyResult:
    """Strategy of a :class:`~records.trajectory.Trajectory` (the root controller's cells).

    A trajectory without controller turns (a baseline, which only records its model calls as
    sub_calls) has no strategy: ``primary == "no-controller"``.
    """
    if traj is None or not traj.turns:
        return StrategyResult(labels=(), primary=NO_CONTROLLER)
    nested = any(sc.nested_trajectory is not None for sc in traj.sub_calls)
    return classify_cells([c.code for c in traj.cells], nested=nested)
