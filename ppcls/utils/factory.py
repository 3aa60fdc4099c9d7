"""Build components (ops, losses, optimizers, schedules, metrics...) from config entries.

A config names a component in one of PaddleClas's two forms:
    - CELoss: {epsilon: 0.1}        (a one-key mapping, used in lists)
    name: Momentum, momentum: 0.9    (a `name` key beside the arguments)
Unknown names, unknown arguments (with a did-you-mean), missing arguments and values whose
type does not match the constructor's annotation are ConfigErrors that name the config key.
A class that takes **kwargs and passes them to its base is checked against the arguments of
every `__init__` along its bases.
"""

import inspect

from ppcls.utils.schema import SECTIONS, is_instance, type_names
from ppcls.utils.errors import ConfigError, shown, unknown

_SIMPLE_TYPES = (int, float, bool, str, list, dict)


def split_spec(spec, where):
    """Return (name, arguments) of a config entry in either form."""
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"{where}: expected a mapping naming a component, got {shown(spec)}")
    if "name" in spec:
        args = {k: v for k, v in spec.items() if k != "name"}
        return spec["name"], args
    if len(spec) != 1:
        raise ConfigError(f"{where}: expected one component name, got keys {list(spec)}")
    name, args = next(iter(spec.items()))
    if args is not None and not isinstance(args, dict):
        raise ConfigError(f"{where}.{name}: arguments must be a mapping, got {shown(args)}")
    return name, dict(args or {})


def _annotation_types(annotation):
    """Simple annotations only: int, float, str, bool, list, dict, or tuples of those."""
    if annotation in _SIMPLE_TYPES:
        return (annotation,)
    if isinstance(annotation, tuple) and all(a in _SIMPLE_TYPES + (type(None),) for a in annotation):
        return annotation
    return None


def parameters(target):
    """Named parameters of `target`; for a class taking **kwargs, those of its bases'
    `__init__` too (where the keyword arguments go)."""
    params = dict(inspect.signature(target).parameters)
    if inspect.isclass(target) and any(p.kind == p.VAR_KEYWORD for p in params.values()):
        for base in target.__mro__[1:]:
            if "__init__" in vars(base) and base is not object:
                for key, param in inspect.signature(base.__init__).parameters.items():
                    # the subclass supplies the base's required ones itself
                    params.setdefault(key, param if param.default is not param.empty
                                      else param.replace(default=None))
    return {k: p for k, p in params.items()
            if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check(registry, name, args, where, kind="component", injected=()):
    """Check a config entry against what it builds, without building it; returns the
    registry's target."""
    if name not in registry:
        raise ConfigError(f"{where}: {unknown(kind, name, sorted(registry))}")
    target = registry[name]
    params = parameters(target)
    for key, value in args.items():
        param = params.get(key)
        if param is None or key in injected:
            allowed = [p for p in params if p not in injected]
            raise ConfigError(f"{where}.{name}: {unknown('argument', key, allowed)}")
        types = _annotation_types(param.annotation)
        if types and not (value is None and param.default is None) and not is_instance(value, types):
            raise ConfigError(f"{where}.{name}.{key} must be {type_names(types)}, got {shown(value)}")
    missing = [k for k, p in params.items()
               if p.default is p.empty and k not in args and k not in injected]
    if missing:
        raise ConfigError(f"{where}.{name}: missing required argument(s) {', '.join(missing)}")
    return target


def create(registry, name, args, where, kind="component", injected=None):
    """Instantiate registry[name](**args, **injected). `injected` are arguments the framework
    supplies (e.g. epochs, step_each_epoch) and are not checked against the config."""
    injected = dict(injected or {})
    target = check(registry, name, args, where, kind, injected)
    params = parameters(target)
    call_args = {k: v for k, v in injected.items() if k in params}
    call_args.update(args)
    try:
        return target(**call_args)
    except ConfigError as err:  # a value out of range: name where it was given
        if str(err).startswith(SECTIONS):
            raise
        raise ConfigError(f"{where}.{name}: {err}") from None


def create_from_spec(registry, spec, where, kind="component", injected=None):
    name, args = split_spec(spec, where)
    return create(registry, name, args, where, kind, injected)


def create_list(registry, specs, where, kind="component", injected=None):
    if specs is None:
        return []
    if not isinstance(specs, list):
        raise ConfigError(f"{where}: expected a list of {kind}s, got {shown(specs)}")
    return [create_from_spec(registry, spec, f"{where}.{i}", kind, injected)
            for i, spec in enumerate(specs)]
