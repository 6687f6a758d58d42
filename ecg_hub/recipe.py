"""Recipes: one YAML file per run that names every component, in the style of torchtune.

A recipe is a YAML mapping. Its top-level key ``recipe`` names the *schema* the file follows (a
short name registered in :data:`RECIPE_SCHEMAS`, such as ``pretrain``, or the dotted path of a
dataclass). The schema is a dataclass whose fields are the top-level sections; each field is one of

- a *component*: a mapping with ``_component_: dotted.path.to.callable`` plus its keyword arguments,
  built by :func:`instantiate` (nested components are built first);
- a nested dataclass of plain settings (``training: {max_steps: 100, ...}``);
- a plain value (``seed: 0``).

Example::

    recipe: pretrain
    output_dir: runs/ecg_jepa_tiny
    model:
      _component_: ecg_hub.modeling.EcgJepaForPreTraining
      config:
        _component_: ecg_hub.modeling.EcgJepaConfig
        hidden_size: 64
    optimizer:
      _component_: torch.optim.AdamW
      lr: 1.0e-3

Validation happens at load time, before anything heavy is built: every ``_component_`` must
import, every keyword must be a parameter of its callable (unless it takes ``**kwargs``), every
settings key must be a field of its dataclass, and values are checked against the field types.
An unknown key is a :class:`RecipeError` (a ``ValueError``) that names the key by its full dotted
path. Overrides (``a.b=1``) are parsed as YAML, so ``training.max_steps=10`` is an int,
``optimizer.betas=[0.9,0.95]`` a list, ``x=null`` ``None``; ``~a.b`` deletes a key. A string
value ``${a.b}`` is replaced by the value at ``a.b`` (after overrides); ``"${output_dir}/logs"``
substitutes text.

**Recipes are data unless trusted.** A recipe may name only components inside
:data:`ALLOWED_COMPONENT_PREFIXES` (ecg-hub's model, data, training and evaluation code,
``torch.optim`` / ``torch.nn``, ``transformers``, ``datasets``), checked on the dotted string
before anything is imported, on every module the path walks through, and on the module that
defines the object it reaches (so ``ecg_hub.data.ptbxl.os.system`` is refused too); and it may not
set ``trust_remote_code: true``. ``load_recipe(..., trust=True)`` (``--trust-recipe`` on the
command line) lifts both rules, for recipes you wrote or read. This holds for packaged recipes,
files, overrides and recipes published next to a checkpoint alike: YAML is read with a safe loader
(no ``!!python`` tags), and interpolation only copies values.

YAML 1.1 (PyYAML) reads ``1e-6`` as a string; recipes are read with the YAML 1.2 float rule, so
``1e-6`` is the float 1e-06 here.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import functools
import importlib
import inspect
import re
import types
import typing
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .utils import explicit_parameters

__all__ = [
    "ALLOWED_COMPONENT_PREFIXES",
    "COMPONENT_KEY",
    "RECIPE_SCHEMAS",
    "Component",
    "RecipeError",
    "apply_overrides",
    "flatten_recipe",
    "get_component",
    "instantiate",
    "load_recipe",
    "recipe_to_dict",
    "resolve_recipe_path",
    "validate_accelerate_config",
    "validate_recipe_file",
]

COMPONENT_KEY = "_component_"
#: ``_partial_: true`` in a component node builds ``functools.partial(target, **kwargs)`` instead of
#: calling the target (for factories called later, e.g. a dataset preparation run only when needed).
PARTIAL_KEY = "_partial_"
SCHEMA_KEY = "recipe"
_RESERVED_KEYS = (COMPONENT_KEY, PARTIAL_KEY)

#: Short recipe kinds -> dotted path of their schema dataclass. A recipe may also give the dotted
#: path itself (``recipe: my_package.MyRecipe``).
RECIPE_SCHEMAS: dict[str, str] = {
    "pretrain": "ecg_hub.training.pretrain.PretrainRecipe",
    "finetune": "ecg_hub.training.finetune.FinetuneRecipe",
}


class RecipeError(ValueError):
    """A recipe (or an override) is invalid. The message names the file and the full key path."""


#: Dotted-path prefixes a recipe may name without ``trust=True`` (``--trust-recipe``).
ALLOWED_COMPONENT_PREFIXES: tuple[str, ...] = (
    "ecg_hub.modeling.",
    "ecg_hub.data.",
    "ecg_hub.training.",
    "ecg_hub.evaluation.",
    "ecg_hub.loading.",
    "torch.optim.",
    "torch.nn.",
    "transformers.",
    "datasets.",
)
#: Inside the allowed prefixes, what still runs programs, loads code or starts servers.
REFUSED_COMPONENT_PREFIXES: tuple[str, ...] = (
    "transformers.commands.",
    "transformers.dynamic_module_utils.",
    "transformers.utils.",
    "transformers.integrations.",
    "datasets.commands.",
)
TRUST_FLAG = "--trust-recipe"

# Set by load_recipe(trust=...) while it validates: whether the allow-list applies.
_TRUSTED = contextvars.ContextVar("ecg_hub_recipe_trusted", default=True)


@contextlib.contextmanager
def _trust(trusted: bool):
    token = _TRUSTED.set(trusted)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def _is_allowed_name(name: str) -> bool:
    name = name + "."
    return name.startswith(ALLOWED_COMPONENT_PREFIXES) and not name.startswith(REFUSED_COMPONENT_PREFIXES)


def _refusal(dotted: str, why: str) -> ImportError:
    return ImportError(
        f"{dotted!r} {why}; an untrusted recipe may name only {', '.join(p + '*' for p in ALLOWED_COMPONENT_PREFIXES)} "
        f"(not {', '.join(p + '*' for p in REFUSED_COMPONENT_PREFIXES)}). If you trust this recipe, pass {TRUST_FLAG}"
    )


def _defining_module(obj: Any) -> str | None:
    """The module that defines ``obj`` (a function's or class's ``__module__``; a bound method's function's)."""
    if inspect.ismodule(obj):
        return obj.__name__
    target = getattr(obj, "__func__", obj)
    module = getattr(target, "__module__", None)
    return module if isinstance(module, str) else None


class Component(dict):
    """A recipe node ``{"_component_": "dotted.path", **kwargs}``; build it with :func:`instantiate`.

    Schema fields annotated ``Component`` accept such a mapping; :func:`load_recipe` checks the
    dotted path imports and the keywords match the callable's signature.
    """

    @property
    def target(self) -> str:
        return self[COMPONENT_KEY]


# ------------------------------------------------------------------------------------------------
# YAML with the 1.2 float rule (so 1e-6 is a float, not a string).
# ------------------------------------------------------------------------------------------------


class _RecipeLoader(yaml.SafeLoader):
    pass


_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)
_RecipeLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def _yaml_load(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_RecipeLoader)
    except yaml.YAMLError as error:
        raise RecipeError(f"{source}: not valid YAML: {error}") from None


# ------------------------------------------------------------------------------------------------
# Locating and reading recipe files.
# ------------------------------------------------------------------------------------------------


def packaged_recipes_dir() -> Path:
    """The folder of the recipes shipped with ecg-hub (``recipes/`` in the repository)."""
    return Path(str(resources.files("ecg_hub.recipes")))


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file from a path, or from a name relative to the packaged recipes
    (``ecg_jepa/pretrain_tiny`` or ``ecg_jepa/pretrain_tiny.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    base = packaged_recipes_dir()
    for candidate in (base / path, base / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(
        str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml") if "accelerate" not in p.parts
    )
    raise RecipeError(
        f"recipe {str(name_or_path)!r} not found (neither a file nor a packaged recipe; packaged: {known})"
    )


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    return _yaml_load(path.read_text(encoding="utf-8"), str(path))


# ------------------------------------------------------------------------------------------------
# Overrides and interpolation.
# ------------------------------------------------------------------------------------------------


def parse_override_value(text: str) -> Any:
    """Parse the value of an override as YAML (``10`` -> int, ``1e-4`` -> float, ``[1,2]`` -> list)."""
    if text == "":
        return ""
    return _yaml_load(text, f"override value {text!r}")


def apply_overrides(data: dict, overrides: Iterable[str], source: str = "recipe") -> dict:
    """Apply ``key.path=value`` (set, YAML-typed) and ``~key.path`` (delete) to a nested mapping.

    Missing intermediate mappings are created; whether the final key is allowed is checked later
    by validation against the schema and the components' signatures.
    """
    data = copy.deepcopy(data)
    for item in overrides:
        if item.startswith("~"):
            keys = _split_key(item[1:], item)
            parent = _walk(data, keys[:-1], item, create=False)
            if not isinstance(parent, dict) or keys[-1] not in parent:
                raise RecipeError(f"override {item!r}: key {'.'.join(keys)!r} is not in the {source}")
            del parent[keys[-1]]
            continue
        if "=" not in item:
            raise RecipeError(f"override {item!r} must have the form key.path=value (or ~key.path to delete)")
        key, value = item.split("=", 1)
        keys = _split_key(key.strip(), item)
        parent = _walk(data, keys[:-1], item, create=True)
        parent[keys[-1]] = parse_override_value(value.strip())
    return data


def _split_key(key: str, item: str) -> list[str]:
    keys = key.split(".")
    if not key or any(not k for k in keys):
        raise RecipeError(f"override {item!r}: malformed key {key!r}")
    return keys


def _walk(data: dict, keys: list[str], item: str, create: bool) -> Any:
    node = data
    for depth, key in enumerate(keys):
        if not isinstance(node, dict):
            raise RecipeError(f"override {item!r}: {'.'.join(keys[:depth])!r} is not a mapping")
        if key not in node or node[key] is None:
            if not create:
                return None
            node[key] = {}
        node = node[key]
    if not isinstance(node, dict):
        raise RecipeError(f"override {item!r}: {'.'.join(keys)!r} is not a mapping")
    return node


_REF_RE = re.compile(r"\$\{([^{}]+)\}")


def resolve_interpolations(data: dict, source: str = "recipe") -> dict:
    """Replace ``${a.b}`` references by the values they point to (whole-string references keep
    the referenced type; embedded ones are formatted into the string)."""

    def lookup(path: str, chain: tuple[str, ...]) -> Any:
        if path in chain:
            raise RecipeError(f"{source}: circular reference ${{{path}}} (via {' -> '.join(chain)})")
        node: Any = data
        for key in path.strip().split("."):
            if not isinstance(node, dict) or key not in node:
                raise RecipeError(f"{source}: reference ${{{path}}} points to a key that does not exist")
            node = node[key]
        return resolve(node, chain + (path,))

    def resolve(node: Any, chain: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            return {k: resolve(v, chain) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v, chain) for v in node]
        if isinstance(node, str) and "${" in node:
            whole = _REF_RE.fullmatch(node)
            if whole:
                return copy.deepcopy(lookup(whole.group(1), chain))
            return _REF_RE.sub(lambda m: str(lookup(m.group(1), chain)), node)
        return node

    return resolve(data, ())


# ------------------------------------------------------------------------------------------------
# Components.
# ------------------------------------------------------------------------------------------------


def get_component(dotted: str) -> Any:
    """Import ``package.module.attr[.attr...]`` (for instance ``torch.optim.AdamW`` or
    ``ecg_hub.modeling.EcgFeatureExtractor.from_preset``)."""
    if not isinstance(dotted, str) or not dotted or dotted.startswith(".") or dotted.endswith("."):
        raise ValueError(f"not a dotted path: {dotted!r}")
    checked = not _TRUSTED.get()
    if checked and not _is_allowed_name(dotted):
        raise _refusal(dotted, "is outside the allowed components")  # before importing anything
    parts = dotted.split(".")
    error: Exception | None = None
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only "this module does not exist" means: try a shorter module path.
            if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                error = exc
                continue
            raise
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
                if checked and inspect.ismodule(obj) and not _is_allowed_name(obj.__name__):
                    raise _refusal(dotted, f"walks into module {obj.__name__!r}")
        except AttributeError as exc:
            error = exc
            continue
        if checked:
            module = _defining_module(obj)
            if module is None or not _is_allowed_name(module):
                raise _refusal(dotted, f"is defined in {module or 'an unknown module'!r}")
        return obj
    raise ImportError(f"cannot import {dotted!r}: {error}")


def is_component(node: Any) -> bool:
    return isinstance(node, Mapping) and COMPONENT_KEY in node


def instantiate(node: Mapping | None, *args: Any, **extra: Any) -> Any:
    """Build a component node: import ``_component_`` and call it with the node's keyword arguments
    (nested component nodes, in mappings and lists too, are built first) updated by ``extra``.

    ``None`` gives ``None``, so optional sections can be passed straight through. A node with
    ``_partial_: true`` gives ``functools.partial(target, *args, **kwargs)`` instead.
    """
    if node is None:
        return None
    if not is_component(node):
        raise ValueError(f"expected a mapping with {COMPONENT_KEY!r}, got {node!r}")
    target = get_component(node[COMPONENT_KEY])
    kwargs = {key: _build(value) for key, value in node.items() if key not in _RESERVED_KEYS}
    kwargs.update(extra)
    if node.get(PARTIAL_KEY, False):
        return functools.partial(target, *args, **kwargs)
    return target(*args, **kwargs)


def _build(value: Any) -> Any:
    if is_component(value):
        return instantiate(value)
    if isinstance(value, Mapping):
        return {key: _build(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_build(v) for v in value]
    return value


def _signature(target: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):  # some builtins have no signature: accept their kwargs as given
        return None




def _swallowing_kwargs_owner(target: Any) -> type | None:
    """The class when ``target`` is a feature extractor / processor class or one of its factory
    classmethods (except ``from_pretrained``): their ``**kwargs`` end up as attributes, so a
    misspelt key would be kept silently instead of failing."""
    try:
        from transformers.feature_extraction_utils import FeatureExtractionMixin
        from transformers.processing_utils import ProcessorMixin
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    owner = target if isinstance(target, type) else getattr(target, "__self__", None)
    if not (isinstance(owner, type) and issubclass(owner, (FeatureExtractionMixin, ProcessorMixin))):
        return None
    if getattr(target, "__name__", "") == "from_pretrained":
        return None
    return owner


def _accepted_keywords(target: Any) -> set[str] | None:
    """Keyword names ``target`` accepts, or ``None`` when it takes any (``**kwargs``)."""
    signature = _signature(target)
    if signature is None:
        return None
    names = explicit_parameters(target)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return names
    owner = _swallowing_kwargs_owner(target)
    if owner is None:
        return None
    for klass in owner.__mro__:
        if "__init__" in vars(klass):
            names |= explicit_parameters(vars(klass)["__init__"]) - {"self"}
    return names


def validate_component(node: Mapping, key: str, source: str, provided: Iterable[str] = ()) -> None:
    """Check a component node: the dotted path imports and every keyword is a parameter of the
    callable (unless it takes ``**kwargs``; feature extractors and processors excepted, whose
    ``**kwargs`` would keep a misspelt key as an attribute); required parameters are given, either by the node or
    by the caller (``provided``: names the recipe passes to :func:`instantiate`). Nested
    components are checked recursively."""
    dotted = node.get(COMPONENT_KEY)
    if not isinstance(dotted, str):
        raise RecipeError(f"{source}: '{key}.{COMPONENT_KEY}' must be a dotted path string, got {dotted!r}")
    try:
        target = get_component(dotted)
    except (ImportError, ValueError) as error:
        raise RecipeError(f"{source}: '{key}.{COMPONENT_KEY}': {error}") from None
    if not callable(target):
        raise RecipeError(f"{source}: '{key}.{COMPONENT_KEY}': {dotted} is not callable")
    if not _TRUSTED.get() and node.get("trust_remote_code"):
        raise RecipeError(
            f"{source}: '{key}.trust_remote_code' is true: an untrusted recipe may not run code from the Hub; "
            f"pass {TRUST_FLAG} if you trust this recipe and the repos it names"
        )
    partial = node.get(PARTIAL_KEY, False)
    if not isinstance(partial, bool):
        raise RecipeError(f"{source}: '{key}.{PARTIAL_KEY}' must be true or false, got {partial!r}")
    signature = _signature(target)
    if signature is not None:
        params = signature.parameters
        accepted = _accepted_keywords(target)
        named = accepted if accepted is not None else explicit_parameters(target)
        for arg in node:
            if arg in _RESERVED_KEYS:
                continue
            if accepted is not None and arg not in accepted:
                raise RecipeError(
                    f"{source}: unknown key '{key}.{arg}': {dotted} has no parameter {arg!r} "
                    f"(parameters: {sorted(named)})"
                )
            if arg in provided:
                raise RecipeError(
                    f"{source}: key '{key}.{arg}' is set by the recipe itself; remove it from the file"
                )
        missing = [
            name
            for name, p in params.items()
            if p.default is inspect.Parameter.empty
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            and name not in node
            and name not in provided
            and name not in ("self", "cls")
        ]
        if missing and not partial:
            raise RecipeError(f"{source}: component '{key}' ({dotted}) is missing required key(s) {missing}")
    for arg, value in node.items():
        if arg not in _RESERVED_KEYS:
            _validate_nested(value, f"{key}.{arg}", source)


def _validate_nested(value: Any, key: str, source: str) -> None:
    if is_component(value):
        validate_component(value, key, source)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _validate_nested(v, f"{key}.{k}", source)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _validate_nested(v, f"{key}.{i}", source)


# ------------------------------------------------------------------------------------------------
# Schema conversion.
# ------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str, provided: Mapping[str, Iterable[str]]) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it where YAML is looser than
    Python (int -> float, list -> tuple, numeric string -> float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise RecipeError(f"{source}: '{key}' must not be null (expected {_type_name(tp)})")
        candidates = [option for option in options if option is not type(None)]
        if len(candidates) == 1:  # Optional[X]: X's own, more precise, error
            return _coerce(value, candidates[0], key, source, provided)
        errors = []
        for option in candidates:
            try:
                return _coerce(value, option, key, source, provided)
            except RecipeError as error:
                errors.append(str(error).removeprefix(f"{source}: "))
        raise RecipeError(
            f"{source}: '{key}': {value!r} is not a valid {_type_name(tp)} ({'; '.join(errors)})"
        )
    if value is None:
        raise RecipeError(f"{source}: '{key}' must not be null (expected {_type_name(tp)})")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise RecipeError(f"{source}: '{key}' must be one of {list(allowed)}, got {value!r}")
        return value
    if tp is Component:
        if not is_component(value):
            raise RecipeError(f"{source}: '{key}' must be a component (a mapping with {COMPONENT_KEY!r})")
        validate_component(value, key, source, provided.get(key, ()))
        return Component(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise RecipeError(f"{source}: '{key}' must be a mapping of settings, got {value!r}")
        return _to_dataclass(tp, value, key + ".", source, provided)
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise RecipeError(f"{source}: '{key}' must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise RecipeError(f"{source}: '{key}' must be a number, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{source}: '{key}' must be a string, got {value!r}")
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{source}: '{key}' must be a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise RecipeError(f"{source}: '{key}' must have {len(args)} items, got {len(value)}")
            items = [
                _coerce(v, a, f"{key}.{i}", source, provided) for i, (v, a) in enumerate(zip(value, args))
            ]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{key}.{i}", source, provided) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise RecipeError(f"{source}: '{key}' must be a mapping, got {value!r}")
        args = typing.get_args(tp)
        value_tp = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, value_tp, f"{key}.{k}", source, provided) for k, v in value.items()}
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise RecipeError(f"{source}: '{key}' must be a {tp.__name__}, got {value!r}")
        return value
    return value


def _to_dataclass(
    cls: type, data: Mapping, prefix: str, source: str, provided: Mapping[str, Iterable[str]]
) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise RecipeError(
                f"{source}: unknown key '{prefix}{key}' (valid keys{' under ' + prefix[:-1] if prefix else ''}: "
                f"{sorted(fields)})"
            )
    kwargs = {}
    for name, field in fields.items():
        key = prefix + name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key, source, provided)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{source}: required key '{key}' is missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        if isinstance(error, RecipeError):
            raise
        raise RecipeError(f"{source}: {prefix[:-1] or 'recipe'}: {error}") from None


def _schema_for(name: Any, source: str) -> type:
    if not isinstance(name, str) or not name:
        raise RecipeError(
            f"{source}: required top-level key {SCHEMA_KEY!r} is missing: name the recipe kind "
            f"({sorted(RECIPE_SCHEMAS)}) or the dotted path of a schema dataclass"
        )
    dotted = RECIPE_SCHEMAS.get(name, name)
    try:
        schema = get_component(dotted)
    except (ImportError, ValueError) as error:
        raise RecipeError(
            f"{source}: '{SCHEMA_KEY}': unknown recipe kind {name!r} (known: {sorted(RECIPE_SCHEMAS)}): {error}"
        ) from None
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        raise RecipeError(f"{source}: '{SCHEMA_KEY}': {dotted} is not a dataclass")
    return schema


def load_recipe(
    path: str | Path | Mapping,
    overrides: Iterable[str] = (),
    schema: type | None = None,
    trust: bool = False,
) -> Any:
    """Read, override, interpolate and validate a recipe; return its schema dataclass instance.

    Args:
        path: a YAML file, the name of a packaged recipe (``ecg_jepa/pretrain_tiny``), or an
            already-parsed mapping.
        overrides: ``key.path=value`` strings (values parsed as YAML) and ``~key.path`` deletions.
        schema: the dataclass the recipe must follow. By default the one its ``recipe`` key names;
            when given, the file's ``recipe`` key must name the same schema (or be absent).
        trust: lift the component allow-list and the ``trust_remote_code`` ban (see the module
            docstring); only for recipes whose every line you trust.

    Raises:
        RecipeError: unknown or missing keys, wrong types, components that do not import or do not
            accept a keyword; the message names the file and the key path.
    """
    with _trust(trust):
        return _load_recipe(path, overrides, schema)


def _load_recipe(path: str | Path | Mapping, overrides: Iterable[str], schema: type | None) -> Any:
    if isinstance(path, Mapping):
        source, data = "recipe", copy.deepcopy(dict(path))
    else:
        file = resolve_recipe_path(path)
        source, data = str(file), read_yaml(file)
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping, got {type(data).__name__}")
    data = apply_overrides(data, overrides, source)
    data = resolve_interpolations(data, source)
    declared = data.get(SCHEMA_KEY)
    if schema is None:
        schema = _schema_for(declared, source)
    elif declared is not None and _schema_for(declared, source) is not schema:
        raise RecipeError(
            f"{source}: this is a {declared!r} recipe, but a {schema.__name__} recipe is needed here"
        )
    hints = typing.get_type_hints(schema)
    if SCHEMA_KEY in hints and SCHEMA_KEY not in data:
        data[SCHEMA_KEY] = next(
            (
                name
                for name, dotted in RECIPE_SCHEMAS.items()
                if dotted == f"{schema.__module__}.{schema.__qualname__}"
            ),
            f"{schema.__module__}.{schema.__qualname__}",
        )
    provided = getattr(schema, "PROVIDED_KWARGS", {})
    recipe = _to_dataclass(schema, data, "", source, provided)
    return recipe


# ------------------------------------------------------------------------------------------------
# Writing recipes back out, for logs and trackers.
# ------------------------------------------------------------------------------------------------


def recipe_to_dict(recipe: Any) -> Any:
    """A schema instance (or any nested value) as plain dicts, lists and scalars (YAML-safe)."""
    if dataclasses.is_dataclass(recipe) and not isinstance(recipe, type):
        return {f.name: recipe_to_dict(getattr(recipe, f.name)) for f in dataclasses.fields(recipe)}
    if isinstance(recipe, Mapping):
        return {str(k): recipe_to_dict(v) for k, v in recipe.items()}
    if isinstance(recipe, (list, tuple)):
        return [recipe_to_dict(v) for v in recipe]
    return recipe


def dump_recipe(recipe: Any) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def flatten_recipe(recipe: Any, prefix: str = "") -> dict[str, int | float | str | bool]:
    """``{"training.max_steps": 10, ...}`` with lists as strings: the form trackers accept as hparams."""
    out: dict[str, Any] = {}
    data = recipe_to_dict(recipe)
    for key, value in data.items() if isinstance(data, dict) else []:
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_recipe(value, name + "."))
        elif isinstance(value, (int, float, str, bool)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


# ------------------------------------------------------------------------------------------------
# Checking any YAML under recipes/ (used by tests and `ecg-hub pretrain --validate-only`).
# ------------------------------------------------------------------------------------------------


def validate_accelerate_config(path: str | Path) -> Any:
    """Check an ``accelerate launch --config_file`` YAML with Accelerate's own loader (which rejects
    unknown top-level keys) and check ``fsdp_config`` keys against ``accelerate launch`` options."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    try:
        config = ClusterConfig.from_yaml_file(str(path))
    except (ValueError, TypeError) as error:
        raise RecipeError(f"{path}: invalid Accelerate config: {error}") from None
    options = {
        option.lstrip("-") for action in launch_command_parser()._actions for option in action.option_strings
    }
    for section in ("fsdp_config",):
        for key in getattr(config, section) or {}:
            if key not in options:
                raise RecipeError(
                    f"{path}: unknown key '{section}.{key}' (not an `accelerate launch` option)"
                )
    return config


def validate_recipe_file(path: str | Path) -> str:
    """Validate any YAML under ``recipes/``: an ecg-hub recipe (top-level ``recipe`` key) or an
    Accelerate launch config (top-level ``compute_environment``). Returns ``"recipe"`` or
    ``"accelerate"``; raises :class:`RecipeError` otherwise."""
    data = read_yaml(path)
    if isinstance(data, dict) and SCHEMA_KEY in data:
        load_recipe(path)
        return "recipe"
    if isinstance(data, dict) and "compute_environment" in data:
        validate_accelerate_config(path)
        return "accelerate"
    raise RecipeError(
        f"{path}: neither an ecg-hub recipe (top-level {SCHEMA_KEY!r} key) nor an Accelerate config "
        "(top-level 'compute_environment' key)"
    )
