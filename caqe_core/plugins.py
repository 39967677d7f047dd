"""Plugin loading and the registries of test types, recruiters and steps."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from caqe_core import hookspecs
from caqe_core.extension import FlowStep, Recruiter, TestType

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "caqe"
PLUGINS_ENV = "CAQE_PLUGINS"
"""Comma-separated plugin names; when set, only these entry points load."""

CORE_PLUGIN_NAMES = ("caqe_core.steps", "caqe_core.screening")
"""Modules of the core that register through the hooks like any plugin."""


class PluginError(RuntimeError):
    """A plugin that cannot be loaded or registers something invalid."""


@dataclass
class PluginInfo:
    name: str
    version: str
    hooks: list[str]
    provides: dict[str, list[str]] = field(default_factory=dict)


class Registry:
    """The plugin manager plus what the plugins registered."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.test_types: dict[str, TestType] = {}
        self.recruiters: dict[str, Recruiter] = {}
        self.flow_steps: dict[str, FlowStep] = {}
        self.versions: dict[str, str] = {}
        self.provided: dict[str, dict[str, list[str]]] = {}

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def plugin_infos(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            hooks = sorted(
                caller.name for caller in self.pm.get_hookcallers(plugin) or []
            )
            infos.append(
                PluginInfo(
                    name=name,
                    version=self.versions.get(name, ""),
                    hooks=hooks,
                    provides=self.provided.get(name, {}),
                )
            )
        return sorted(infos, key=lambda info: info.name)

    def test_type(self, name: str) -> TestType:
        try:
            return self.test_types[name]
        except KeyError:
            raise PluginError(
                f"Unknown test type {name!r}. Loaded test types: "
                f"{', '.join(sorted(self.test_types)) or 'none'}. Install the plugin "
                f"that provides it, or check {PLUGINS_ENV}."
            ) from None

    def recruiter(self, name: str) -> Recruiter:
        try:
            return self.recruiters[name]
        except KeyError:
            raise PluginError(
                f"Unknown recruiter {name!r}. Loaded recruiters: "
                f"{', '.join(sorted(self.recruiters)) or 'none'}. Install the plugin "
                f"that provides it, or check {PLUGINS_ENV}."
            ) from None


def allowed_plugin_names() -> set[str] | None:
    value = os.environ.get(PLUGINS_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def build_registry(extra_plugins: list[tuple[str, object]] | None = None) -> Registry:
    """Load every plugin of the ``caqe`` entry-point group and collect registrations.

    ``CAQE_PLUGINS`` restricts loading to the named entry points.
    ``extra_plugins`` registers (name, module-or-object) pairs as well, which
    tests use for plugins defined inline.
    """
    pm = pluggy.PluginManager("caqe")
    pm.add_hookspecs(hookspecs)
    registry = Registry(pm)

    from caqe_core import __version__

    for name in CORE_PLUGIN_NAMES:
        _register(pm, importlib.import_module(name), name)
        registry.versions[name] = __version__

    allowed = allowed_plugin_names()
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and entry_point.name not in allowed:
            continue
        if pm.has_plugin(entry_point.name):
            continue
        try:
            plugin = entry_point.load()
        except Exception as error:
            raise PluginError(
                f"Plugin {entry_point.name!r} ({entry_point.value}) failed to import: "
                f"{error}. Fix or uninstall it, or leave it out of {PLUGINS_ENV}."
            ) from error
        _register(pm, plugin, entry_point.name)
        dist = getattr(entry_point, "dist", None)
        registry.versions[entry_point.name] = dist.version if dist else ""

    for name, plugin in extra_plugins or []:
        _register(pm, plugin, name)
        registry.versions[name] = getattr(plugin, "__version__", "")

    _check_pending(pm)
    _collect(registry)
    return registry


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as error:
        raise PluginError(f"Plugin {name!r} is invalid: {error}") from error


def _check_pending(pm: pluggy.PluginManager) -> None:
    """Fail on a hook implementation whose name matches no hookspec."""
    for name, plugin in pm.list_name_plugin():
        for caller in pm.get_hookcallers(plugin) or []:
            if caller.spec is None:
                known = sorted(
                    hook
                    for hook in dir(hookspecs)
                    if hasattr(getattr(hookspecs, hook), "caqe_spec")
                )
                import difflib

                close = difflib.get_close_matches(caller.name, known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise PluginError(
                    f"Plugin {name!r} implements unknown hook {caller.name!r}.{hint} "
                    f"Known hooks: {', '.join(known)}."
                )


def _collect(registry: Registry) -> None:
    collections: list[tuple[str, type, dict[str, Any], tuple[str, ...]]] = [
        (
            "register_test_types",
            TestType,
            registry.test_types,
            ("name", "title", "config_model"),
        ),
        (
            "register_recruiters",
            Recruiter,
            registry.recruiters,
            ("name", "title", "entry_endpoint"),
        ),
        ("register_flow_steps", FlowStep, registry.flow_steps, ("name", "title")),
    ]
    for hook_name, base, target, attributes in collections:
        caller = getattr(registry.pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            plugin_name = registry.pm.get_name(impl.plugin) or repr(impl.plugin)
            register = _make_register(
                plugin_name, hook_name, base, target, attributes, registry
            )
            # Pluggy lets an implementation take fewer arguments than the spec.
            arguments = {"register": register} if "register" in impl.argnames else {}
            try:
                impl.function(**arguments)
            except PluginError:
                raise
            except Exception as error:
                raise PluginError(
                    f"Plugin {plugin_name!r} failed in {hook_name}: "
                    f"{type(error).__name__}: {error}"
                ) from error


def _make_register(
    plugin_name: str,
    hook_name: str,
    base: type[Any],
    target: dict[str, Any],
    attributes: tuple[str, ...],
    registry: Registry,
) -> Callable[[Any], None]:
    def register(obj: Any) -> None:
        if not isinstance(obj, base):
            raise PluginError(
                f"Plugin {plugin_name!r} passed {obj!r} to {hook_name}; expected an "
                f"instance of caqe_core.{base.__name__}."
            )
        for attribute in attributes:
            if not getattr(obj, attribute, None):
                raise PluginError(
                    f"Plugin {plugin_name!r} registered {type(obj).__name__} in "
                    f"{hook_name} without the class attribute {attribute!r}."
                )
        if obj.name in target:
            raise PluginError(
                f"Plugin {plugin_name!r} registered {obj.name!r} in {hook_name}, but "
                "another plugin already did. Leave one of them out with "
                f"{PLUGINS_ENV}."
            )
        target[obj.name] = obj
        kind = hook_name.removeprefix("register_")
        registry.provided.setdefault(plugin_name, {}).setdefault(kind, []).append(
            obj.name
        )

    return register


_registry: Registry | None = None


def get_registry() -> Registry:
    """Return the process-wide registry, building it on first use."""
    global _registry
    if _registry is None:
        _registry = build_registry()
    return _registry


def set_registry(registry: Registry | None) -> None:
    """Replace the process-wide registry (tests, embedding)."""
    global _registry
    _registry = registry
