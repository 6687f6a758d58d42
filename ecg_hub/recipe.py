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
path.

Reading, overriding and interpolating are OmegaConf's (what torchtune's configs build on); the
schema, the validation and :func:`instantiate` are ecg-hub's. Files and override values are read
with OmegaConf's YAML loader: a safe loader (no ``!!python`` tags), duplicate keys refused, and the
YAML 1.2 float rule (PyYAML's 1.1 rule reads ``1e-6`` as a string; here it is the float 1e-06).
Overrides (``a.b=1``) are parsed as YAML, so ``training.max_steps=10`` is an int,
``optimizer.betas=[0.9,0.95]`` a list, ``x=null`` ``None``; a value *replaces* what was at the key
(``OmegaConf.update(..., merge=False)``: a new component does not inherit the old one's
arguments); ``~a.b`` deletes a key. A string value ``${a.b}`` is replaced by the value at ``a.b``
(after overrides; ``${.b}`` is a sibling, ``${..b}`` one level up, ``\\${`` a literal);
``"${output_dir}/logs"`` substitutes text; ``???`` marks a value that must be given.

**Recipes are data unless trusted.** A recipe may name only components inside
:data:`ALLOWED_COMPONENT_PREFIXES` (ecg-hub's model, data, training and evaluation code,
``torch.optim`` / ``torch.nn``, ``transformers``, ``datasets``), checked on the dotted string
before anything is imported, on every module the path walks through, and on the module that
defines the object it reaches (so ``ecg_hub.data.ptbxl.os.system`` is refused too); it may not
set ``trust_remote_code: true``; and its interpolations may only refer to its own keys: OmegaConf
resolvers (``${oc.env:HF_TOKEN}`` would copy a secret into, say, a tracker's run name;
``oc.decode`` parses text) are refused. ``load_recipe(..., trust=True)`` (``--trust-recipe`` on
the command line) lifts these rules, for recipes you wrote or read. This holds for packaged
recipes, files, overrides and recipes published next to a checkpoint alike.
"""

from __future__ import annotations

import contextlib
import contextvars
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
from omegaconf import DictConfig, OmegaConf, grammar_parser
from omegaconf.errors import GrammarParseError, MissingMandatoryValue, OmegaConfBaseException
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser

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
# YAML, read by OmegaConf's loader.
# ------------------------------------------------------------------------------------------------


def _describe(error: OmegaConfBaseException) -> str:
    """``'<full key>': <first line of OmegaConf's message>`` (its later lines repeat the key and
    name OmegaConf's internal types)."""
    lines = (error.msg or str(error)).strip().splitlines()
    message = lines[0] if lines else type(error).__name__
    if isinstance(error, MissingMandatoryValue):
        message = "is missing (its value is ???); set it with an override"
    elif isinstance(error, GrammarParseError):
        message = f"not a valid interpolation: {message} (a literal ${{ is written \\${{)"
    return f"'{error.full_key}': {message}" if error.full_key else message


def _yaml_load(text: str, source: str) -> Any:
    """Parse YAML ``text`` as OmegaConf parses its files and dotlists: a safe loader (no ``!!python``
    tags), the YAML 1.2 float rule (``1e-6`` is a float; PyYAML's 1.1 rule reads it as a string),
    duplicate keys refused, alias expansion bounded (OmegaConf 2.4), timestamps left as strings.

    ``OmegaConf.from_dotlist`` is the public entry point that returns the parsed object unchanged:
    ``OmegaConf.create(text)`` would turn a bare string into ``{text: None}`` and fail on a number,
    and a recipe that is not a mapping must be reported as such."""
    try:
        parsed = OmegaConf.from_dotlist([f"value={text}"])
    except yaml.YAMLError as error:
        raise RecipeError(f"{source}: not valid YAML: {error}") from None
    except OmegaConfBaseException as error:  # a bad ${...}, or a value OmegaConf cannot hold (a !!set)
        # Keys are named as in the text, without the "value" key the text was parsed under.
        error.full_key = (error.full_key or "").removeprefix("value").removeprefix(".") or None
        raise RecipeError(f"{source}: {_describe(error)}") from None
    return OmegaConf.to_container(parsed)["value"]


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
# Overrides and interpolation, with OmegaConf.
# ------------------------------------------------------------------------------------------------


def parse_override_value(text: str) -> Any:
    """Parse the value of an override as YAML, as recipe files are read (``10`` -> int, ``1e-4`` ->
    float, ``[1,2]`` -> list, ``null`` -> None). An empty value is the empty string (OmegaConf's own
    dotlist reads ``key=`` as null; here ``key=`` has always meant "")."""
    return _parse_value(text, f"override value {text!r}")


def _parse_value(text: str, source: str) -> Any:
    return "" if text == "" else _yaml_load(text, source)


def _to_config(data: Mapping, source: str) -> DictConfig:
    """A copy of ``data`` as an OmegaConf ``DictConfig`` (whose ``${...}`` strings are interpolations)."""
    try:
        return OmegaConf.create(data if OmegaConf.is_config(data) else dict(data))
    except OmegaConfBaseException as error:
        raise RecipeError(f"{source}: {_describe(error)}") from None


def apply_overrides(data: Mapping, overrides: Iterable[str], source: str = "recipe") -> dict:
    """Apply ``key.path=value`` (set, YAML-typed) and ``~key.path`` (delete) to a nested mapping;
    returns a new plain dict, interpolations still unresolved.

    Missing intermediate mappings are created; whether the final key is allowed is checked later
    by validation against the schema and the components' signatures.
    """
    config = _to_config(data, source)
    _apply_overrides(config, overrides, source)
    return OmegaConf.to_container(config)


def _apply_overrides(config: DictConfig, overrides: Iterable[str], source: str) -> None:
    for item in overrides:
        if item.startswith("~"):
            keys = _split_key(item[1:], item)
            parent = _override_parent(config, keys[:-1], item)
            # .keys(): `in` on a DictConfig resolves the value, and resolvers are checked only later.
            if parent is None or keys[-1] not in parent.keys():  # noqa: SIM118
                raise RecipeError(f"override {item!r}: key {'.'.join(keys)!r} is not in the {source}")
            del parent[keys[-1]]
            continue
        if "=" not in item:
            raise RecipeError(f"override {item!r} must have the form key.path=value (or ~key.path to delete)")
        key, value = item.split("=", 1)
        keys = _split_key(key.strip(), item)
        _override_parent(config, keys[:-1], item)
        try:
            # merge=False: the value replaces what was there. OmegaConf's dotlist (and Hydra) merge a
            # mapping into the old one, so `dataset={_component_: ...}` would keep the keyword
            # arguments of the component it replaces.
            parsed = _parse_value(value.strip(), f"override {item!r}")
            OmegaConf.update(config, ".".join(keys), parsed, merge=False)
        except OmegaConfBaseException as error:
            raise RecipeError(f"override {item!r}: {_describe(error)}") from None


def _split_key(key: str, item: str) -> list[str]:
    keys = key.split(".")
    # Only dotted names: OmegaConf's bracket indexing and backslash escapes would address other
    # nodes than the ones _override_parent checks.
    if not key or any(not k for k in keys) or any(c in key for c in "[]\\"):
        raise RecipeError(f"override {item!r}: malformed key {key!r} (expected dotted names: a.b.c)")
    return keys


def _override_parent(config: DictConfig, keys: list[str], item: str) -> DictConfig | None:
    """The mapping at ``keys``, or ``None`` where the path does not exist yet (or is null: then
    ``OmegaConf.update`` creates it). OmegaConf would silently replace a scalar on the way by a
    mapping, and write through an interpolation into the node it refers to; both are errors here."""
    node = config
    for depth, key in enumerate(keys):
        path = ".".join(keys[: depth + 1])
        if key not in node.keys() or OmegaConf.is_missing(node, key):  # noqa: SIM118 (see _apply_overrides)
            return None
        if OmegaConf.is_interpolation(node, key):
            raise RecipeError(
                f"override {item!r}: {path!r} is an interpolation; override the key it refers to, "
                f"or replace {path!r} as a whole"
            )
        child = node[key]
        if child is None:
            return None
        if not isinstance(child, DictConfig):
            raise RecipeError(f"override {item!r}: {path!r} is not a mapping")
        node = child
    return node


def resolve_interpolations(data: Mapping, source: str = "recipe") -> dict:
    """Resolve ``${a.b}`` references with OmegaConf: a whole-string reference keeps the referenced
    type, embedded ones are formatted into the string, ``${.b}`` is a sibling and ``${..b}`` one level up,
    ``\\${`` is a literal ``${``. A value ``???`` is a required value still missing.

    While :func:`load_recipe` checks an untrusted recipe, references may not call resolvers
    (``${oc.env:...}`` and the like, see :func:`_refuse_resolvers`)."""
    return _resolve(_to_config(data, source), source)


def _resolve(config: DictConfig, source: str) -> dict:
    if not _TRUSTED.get():
        _refuse_resolvers(OmegaConf.to_container(config), "", source)
    try:
        return OmegaConf.to_container(config, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as error:
        raise RecipeError(f"{source}: {_describe(error)}") from None


def _refuse_resolvers(node: Any, key: str, source: str) -> None:
    """An untrusted recipe's ``${...}`` may only copy values of the recipe. OmegaConf's resolvers
    reach beyond it (``oc.env`` reads environment variables, which a recipe could copy into a
    tracker's run name: a token would leave the machine) or parse text as configuration again
    (``oc.decode``, ``oc.create``: a way to build a resolver call this check never saw), and any
    imported code may register more. The check walks OmegaConf's own parse tree of each string, so
    nested and quoted interpolations are seen and an escaped ``\\${`` is not."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            _refuse_resolvers(v, f"{key}.{k}" if key else str(k), source)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _refuse_resolvers(v, f"{key}.{i}", source)
    elif isinstance(node, str) and "${" in node:
        try:
            stack = [grammar_parser.parse(node)]
        except GrammarParseError as error:
            raise RecipeError(f"{source}: '{key}': {node!r} is not a valid interpolation: {error}") from None
        while stack:
            tree = stack.pop()
            if isinstance(tree, OmegaConfGrammarParser.InterpolationResolverContext):
                name = tree.resolverName().getText()
                raise RecipeError(
                    f"{source}: '{key}': {tree.getText()} calls the resolver {name!r}; an untrusted "
                    "recipe's interpolations may only refer to its own keys (${a.b}), since resolvers read "
                    f"environment variables or parse text. If you trust this recipe, pass {TRUST_FLAG}"
                )
            stack.extend(getattr(tree, "children", None) or ())


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
    if OmegaConf.is_config(node):  # a DictConfig node: its interpolations resolved, as plain data
        node = OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
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
        source, data = "recipe", path
    else:
        file = resolve_recipe_path(path)
        source, data = str(file), read_yaml(file)
    if not isinstance(data, Mapping):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping, got {type(data).__name__}")
    config = _to_config(data, source)  # a copy: the caller's mapping is left as it was
    _apply_overrides(config, overrides, source)
    data = _resolve(config, source)
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


# `${` with the backslashes before it: OmegaConf reads `\${` as a literal `${` and `\\` before it as `\`.
_INTERPOLATION_START = re.compile(r"(\\*)\$\{")


def _escape_interpolations(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _escape_interpolations(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape_interpolations(v) for v in value]
    if isinstance(value, str):
        return _INTERPOLATION_START.sub(lambda m: m.group(1) * 2 + "\\${", value)
    return value


def dump_recipe(recipe: Any) -> str:
    """The resolved recipe as YAML that :func:`load_recipe` reads back to the same values: its
    strings are literals now, so a ``${`` in them (one written ``\\${``) is escaped again instead of
    being resolved a second time (``recipe.yaml`` is published next to a model and loaded again)."""
    return yaml.safe_dump(_escape_interpolations(recipe_to_dict(recipe)), sort_keys=False)


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
