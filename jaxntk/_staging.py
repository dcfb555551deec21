"""Partial evaluation: split fn(known, unknown) into what the known inputs fix and what is left.

    residuals, program = stage(fn, known, unknown)
    program(residuals, unknown') == fn(known, unknown')      for every unknown' shaped like unknown

A small interpreter runs fn's jaxpr once with the known inputs' values. An equation whose inputs
are all known is evaluated there and then; the others are recorded, in order, as the program.
The residuals are the known values that the recorded equations (or fn's outputs) read: the split
that `jax.linearize` makes for a linear map, here for any function, e.g. the order-k Taylor terms
of a network as a function of the displacement δ with the parameters params0 and the inputs x
known. Jit calls are inlined so that their known part is evaluated too; other calls (those with a
custom derivative rule) are recorded whole as soon as one input is unknown, so that derivatives of
the program equal those of fn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend import core as jex_core

# jaxpr calls whose body is split like the outer jaxpr
_INLINED = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr"}

_UNKNOWN, _KNOWN = 0, 1


class Program:
    """The recorded equations of a split: call it as program(residuals, unknown).

    Attributes:
        residual_bytes: bytes of the residuals that are not known inputs themselves.
        input_bytes: bytes of the known inputs that the program reads (already held by the
            caller, so not counted in residual_bytes).
    """

    def __init__(self, instructions, n_slots, unknown_slots, unknown_tree, outputs, out_tree):
        self._instructions = instructions
        self._n_slots = n_slots
        self._unknown_slots = unknown_slots
        self._unknown_tree = unknown_tree
        self._outputs = outputs
        self._out_tree = out_tree
        self.residual_bytes = 0
        self.input_bytes = 0

    @property
    def num_equations(self) -> int:
        """The number of recorded equations (the program's size before XLA's simplifications)."""
        return len(self._instructions)

    def __call__(self, residuals: list, unknown: Any) -> Any:
        leaves, tree = jax.tree.flatten(unknown)
        if tree != self._unknown_tree:
            raise ValueError(
                f"the unknown argument must have the tree structure {self._unknown_tree}, "
                f"got {tree}"
            )
        slots: list = [None] * self._n_slots
        for s, leaf in zip(self._unknown_slots, leaves, strict=True):
            slots[s] = leaf

        def value(ref):
            kind, at = ref
            if kind == "slot":
                return slots[at]
            if kind == "residual":
                return residuals[at]
            return at  # a literal

        for prim, params, refs, outs in self._instructions:
            result = prim.bind(*(value(r) for r in refs), **prim.get_bind_params(params))
            if not prim.multiple_results:
                result = [result]
            for s, r in zip(outs, result, strict=True):
                if s is not None:
                    slots[s] = r
        return jax.tree.unflatten(self._out_tree, [value(r) for r in self._outputs])


def stage(fn: Callable[[Any, Any], Any], known: Any, unknown: Any) -> tuple[list, Program]:
    """(residuals, program) with program(residuals, u) == fn(known, u) for u shaped like unknown.

    Args:
        fn: (known, unknown) -> a pytree of arrays.
        known: a pytree of arrays (or tracers) whose values are used now.
        unknown: a pytree of arrays (or shape-dtype structs) giving only shapes and dtypes.

    Returns:
        The residuals (a list of arrays: a pytree) and the `Program`.
    """
    k_leaves, k_tree = jax.tree.flatten(known)
    u_leaves, u_tree = jax.tree.flatten(unknown)
    n_known = len(k_leaves)
    out_trees = []

    def flat(*leaves):
        k_part = jax.tree.unflatten(k_tree, leaves[:n_known])
        out = fn(k_part, jax.tree.unflatten(u_tree, leaves[n_known:]))
        out_leaves, out_tree = jax.tree.flatten(out)
        out_trees.append(out_tree)
        return out_leaves

    avals = [jax.ShapeDtypeStruct(np.shape(a), jax.numpy.result_type(a)) for a in u_leaves]
    closed = jax.make_jaxpr(flat)(*k_leaves, *avals)
    split = _Split(input_ids={id(a) for a in k_leaves})
    unknown_slots = [split.new_slot() for _ in u_leaves]
    args = [(_KNOWN, a) for a in k_leaves] + [(_UNKNOWN, s) for s in unknown_slots]
    outs = split.run(closed.jaxpr, closed.consts, args)
    outputs = [split.ref(o) for o in outs]
    program = Program(
        split.instructions, split.n_slots, unknown_slots, u_tree, outputs, out_trees[0]
    )
    program.residual_bytes = split.new_bytes
    program.input_bytes = split.input_bytes
    return split.residuals, program


def residual_bytes(fn: Callable[[Any, Any], Any], known: Any, unknown: Any) -> int:
    """The bytes of `stage(fn, known, unknown)`'s residuals beyond the known inputs, from shapes
    only (nothing is computed).

    Args:
        fn: as for `stage`.
        known: a pytree of arrays or shape-dtype structs.
        unknown: a pytree of arrays or shape-dtype structs.

    Returns:
        The number of bytes.
    """
    found = []

    def measure(k):
        _, program = stage(fn, k, unknown)
        found.append(program.residual_bytes)
        return 0

    jax.eval_shape(measure, known)
    return found[0]


class _Split:
    def __init__(self, input_ids: set[int]):
        self.instructions: list = []
        self.residuals: list = []
        self._residual_at: dict[int, int] = {}
        self._input_ids = input_ids
        self.n_slots = 0
        self.new_bytes = 0
        self.input_bytes = 0

    def new_slot(self) -> int:
        self.n_slots += 1
        return self.n_slots - 1

    def ref(self, item):
        kind, x = item
        if kind == _UNKNOWN:
            return ("slot", x)
        if isinstance(x, (int, float, complex, bool, np.generic)) or (
            isinstance(x, np.ndarray) and x.ndim == 0
        ):
            return ("literal", x)
        at = self._residual_at.get(id(x))
        if at is None:
            at = len(self.residuals)
            self._residual_at[id(x)] = at
            self.residuals.append(x)
            size = int(np.prod(np.shape(x))) * jax.numpy.result_type(x).itemsize
            if id(x) in self._input_ids:
                self.input_bytes += size
            else:
                self.new_bytes += size
        return ("residual", at)

    def run(self, jaxpr, consts, args: list) -> list:
        env: dict = {}

        def read(v):
            return (_KNOWN, v.val) if isinstance(v, jex_core.Literal) else env[v]

        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[v] = (_KNOWN, c)
        env.update(zip(jaxpr.invars, args, strict=True))
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            outs = self._equation(eqn, ins)
            env.update(zip(eqn.outvars, outs, strict=True))
        return [read(v) for v in jaxpr.outvars]

    def _equation(self, eqn, ins: list) -> list:
        prim = eqn.primitive
        if all(kind == _KNOWN for kind, _ in ins):
            out = prim.bind(*(x for _, x in ins), **prim.get_bind_params(eqn.params))
            return [(_KNOWN, o) for o in (out if prim.multiple_results else [out])]
        body = _INLINED.get(prim.name)
        if body is not None and body in eqn.params:
            sub = eqn.params[body]
            return self.run(sub.jaxpr, sub.consts, ins)
        refs = [self.ref(item) for item in ins]
        outs = [None if isinstance(v, jex_core.DropVar) else self.new_slot() for v in eqn.outvars]
        self.instructions.append((prim, eqn.params, refs, outs))
        return [(_UNKNOWN, s) for s in outs]
