"""The one registry of model builders, looked up by `Arch.name`."""

from ppcls.utils.errors import shown

_BUILDERS = {}


def register_model(*names):
    """Register a builder function under one or more names (aliases share one builder)."""

    def decorator(builder):
        for name in names or (builder.__name__,):
            if name in _BUILDERS:
                raise ValueError(f"model name {name!r} is registered twice")
            _BUILDERS[name] = builder
        return builder

    return decorator


def available_models():
    return sorted(_BUILDERS)


def get_model_builder(name):
    if name not in _BUILDERS:
        raise KeyError(
            f"unknown Arch.name {shown(name)}; available models: {', '.join(available_models())}"
        )
    return _BUILDERS[name]
