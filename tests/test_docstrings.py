"""Every public function and class documents its arguments and what it returns (Google style).

Public: the names in each module's `__all__`, and the public methods and properties of the public
classes. A function with parameters needs an `Args:` section, one that returns a value a
`Returns:` section; a class needs `Args:` or `Attributes:` when it has fields or parameters.
"""

import importlib
import inspect
import pkgutil
import re

import pytest

import jaxntk
import jaxntk.experiments

MODULES = [
    "jaxntk.targets",
    "jaxntk.data",
    "jaxntk.network",
    "jaxntk.taylor",
    "jaxntk.spectral",
    "jaxntk.predict",
    "jaxntk.scaling",
    "jaxntk.onestep",
    "jaxntk.diagnostics",
    "jaxntk.objectives",
    "jaxntk.training",
    "jaxntk.sharding",
    "jaxntk.checkpoint",
    "jaxntk.plots",
    "jaxntk.cli",
] + [
    f"jaxntk.experiments.{m.name}"
    for m in pkgutil.iter_modules(jaxntk.experiments.__path__)
    if not m.name.startswith("_")
]


def _public(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n
            for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
        ]
    return [(n, getattr(module, n)) for n in names]


def _callables():
    for mod_name in MODULES:
        module = importlib.import_module(mod_name)
        for name, obj in _public(module):
            if inspect.isclass(obj):
                yield f"{mod_name}.{name}", obj
                for attr, raw in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    if isinstance(raw, classmethod | staticmethod):
                        yield f"{mod_name}.{name}.{attr}", getattr(obj, attr)
                    elif inspect.isfunction(raw) or isinstance(raw, property):
                        yield f"{mod_name}.{name}.{attr}", raw
            elif inspect.isfunction(obj):
                yield f"{mod_name}.{name}", obj


def _parameters(fn) -> list[str]:
    return [
        p.name for p in inspect.signature(fn).parameters.values() if p.name not in ("self", "cls")
    ]


def _needs_returns(fn) -> bool:
    ann = inspect.signature(fn).return_annotation
    return ann not in (None, "None", inspect.Signature.empty)


CALLABLES = dict(_callables())


@pytest.mark.parametrize("qualname", sorted(CALLABLES))
def test_public_docstring_documents_arguments_and_result(qualname):
    obj = CALLABLES[qualname]
    doc = inspect.getdoc(obj.fget if isinstance(obj, property) else obj) or ""
    assert doc.strip(), f"{qualname} has no docstring"
    if isinstance(obj, property):
        return  # a property's docstring says what it is
    if inspect.isclass(obj):
        fields = getattr(obj, "__dataclass_fields__", None) or getattr(obj, "_fields", ())
        if issubclass(obj, Exception) or not fields:
            return
        assert "Attributes:" in doc or "Args:" in doc, f"{qualname}: no Attributes/Args section"
        return
    if _parameters(obj):
        assert "Args:" in doc, f"{qualname}: no Args section"
        missing = [
            p for p in _parameters(obj) if not re.search(rf"^\s+\**{p}( \(.*\))?:", doc, re.M)
        ]
        assert not missing, f"{qualname}: Args does not name {missing}"
    if _needs_returns(obj):
        assert "Returns:" in doc or "Yields:" in doc, f"{qualname}: no Returns section"
