"""Name → class registries, filled by a decorator (timm's ``@register_model`` pattern).

One generic class serves every registry in mindloop. It lives in ``envs``, the bottom layer,
so every package can use it (arms here; encoders, cores, algorithms in the packages above).
Third-party packages add entries through a Python entry-point group, loaded lazily the first
time a name is looked up that is not registered in-process.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry of classes (or factories) keyed by name.

    >>> CORES = Registry("core")
    >>> @CORES.register("gru")
    ... class GRUCore: ...
    >>> CORES.get("gru") is GRUCore
    True
    """

    def __init__(
        self,
        kind: str,
        entry_point_group: str | None = None,
        plugin_base: Callable[[], type] | None = None,
    ) -> None:
        """``plugin_base`` returns the class a plug-in's object must subclass (a function, so
        a registry can be made before its base class); None: anything goes."""
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.plugin_base = plugin_base
        self._items: dict[str, T] = {}
        self._broken: dict[str, str] = {}  # plug-in name -> why it failed to load
        self._plugins_loaded = entry_point_group is None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``obj`` under ``name``; registering a taken name is an error."""

        def add(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} name {name!r} is already registered")
            self._items[name] = obj
            return obj

        return add

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._items:
                continue
            # Loading the entry point imports the plugin module; its decorator registers it.
            # If the module does not register under the entry point's name, register the
            # loaded object directly so that `[project.entry-points]` alone is enough.
            try:
                obj = ep.load()
                self._check_plugin(ep.name, obj)
            except Exception as err:  # one broken plug-in must not break every lookup
                first = str(err).splitlines()[0] if str(err) else ""
                self._broken[ep.name] = f"{ep.value}: {type(err).__name__}: {first}"
                warnings.warn(
                    f"{self.kind} plug-in {ep.name!r} failed to load ({self._broken[ep.name]})",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            if ep.name not in self._items:
                self._items[ep.name] = obj

    def _check_plugin(self, name: str, obj: object) -> None:
        """A plug-in whose object is not a subclass of ``plugin_base`` would fail later, at
        build time, with an error naming neither it nor the fix."""
        if self.plugin_base is None or self._items.get(name) is not None:
            return  # its module registered something under the name itself
        base = self.plugin_base()
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise TypeError(f"{obj!r} is not a subclass of {base.__module__}.{base.__qualname__}")

    def get(self, name: str) -> T:
        """The entry named ``name``; an unknown name raises a one-line error listing choices."""
        if name not in self._items:
            self._load_plugins()
        if name in self._broken and name not in self._items:
            raise UnknownNameError(
                f"{self.kind} {name!r} is installed but its plug-in failed to load "
                f"({self._broken[name]})"
            )
        if name not in self._items:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self)) or '(none)'}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


class UnknownNameError(ValueError):
    """Unknown registry name. A ValueError (not KeyError) so the message prints on one line
    without KeyError's quoting, and CLI code can catch user mistakes as ValueError."""
