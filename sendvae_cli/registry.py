"""The plugin manager: built-ins and entry-point plugins, and name lookups with helpful errors.

Built-in components live in ordinary plugin modules registered through the same hooks as
third-party ones. Outside plugins are the entry points of group `sendvae`; the environment
variable SENDVAE_LOAD_PLUGINS (comma-separated distribution or entry-point names, empty for
none) restricts which of them load. A plugin that fails to import or to register is recorded
once in `Registry.problems` and left out; every other plugin keeps working.
"""

from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from sendvae_cli import hookspecs
from sendvae_cli.errors import UserError
from sendvae_cli.specs import DatasetSpec, GeneratorSpec, MetricSpec, TeacherSpec, VAEBaseSpec

ENTRY_POINT_GROUP = "sendvae"

# Built-in plugin modules, registered exactly like outside ones.
BUILTIN_PLUGINS = {
    "sendvae.teachers": "sendvae_cli.teachers.builtin",
    "sendvae.datasets": "sendvae_cli.data.builtin",
    "sendvae.vae_bases": "sendvae_cli.vae.builtin",
    "sendvae.generators": "sendvae_cli.generators.builtin",
    "sendvae.metrics": "sendvae_cli.eval.builtin_metrics",
}

# kind -> (hook name, what a user calls one of these)
KINDS = {
    "teacher": ("register_teachers", "teacher"),
    "vae_base": ("register_vae_bases", "VAE base"),
    "generator": ("register_generators", "generator"),
    "dataset": ("register_datasets", "dataset"),
    "metric": ("register_metrics", "metric"),
}


SPEC_TYPES = {"teacher": TeacherSpec, "vae_base": VAEBaseSpec, "generator": GeneratorSpec, "dataset": DatasetSpec,
              "metric": MetricSpec}


@dataclass
class PluginInfo:
    name: str
    version: str
    origin: str  # "built-in" or "entry point of <distribution>"
    error: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)  # kind -> names


@dataclass(frozen=True)
class Registered:
    spec: Any
    plugin: str


class Registry:
    def __init__(self, load_outside: bool = True):
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.problems: list[str] = []
        self.components: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
        self._aliases: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}

        from sendvae_cli import __version__

        for name, module_name in BUILTIN_PLUGINS.items():
            self._add(name, importlib.import_module(module_name), __version__, "built-in")
        if load_outside:
            self._load_entry_points()
        for kind in KINDS:
            self._collect(kind)

    def register_plugin(self, name: str, plugin: Any, version: str = "local") -> PluginInfo:
        """Add a plugin object (a module or any object with @hookimpl functions) in-process.

        For notebooks, tests and scripts; installed plugins use the `sendvae` entry point.
        """
        self._add(name, plugin, version, "registered in-process")
        for kind in KINDS:
            self._collect(kind, only=name)
        return self.plugins[name]

    # -- loading ---------------------------------------------------------------------------
    def _add(self, name: str, module: Any, version: str, origin: str) -> None:
        info = PluginInfo(name=name, version=version, origin=origin)
        self.plugins[name] = info
        try:
            self.pm.register(module, name=name)
            # A misspelled hook (register_teacher instead of register_teachers) is an error of
            # that plugin alone: report it and leave the plugin out.
            self.pm.check_pending()
        except Exception as error:  # noqa: BLE001 - any failure of a plugin is reported, not raised
            if self.pm.is_registered(module):
                self.pm.unregister(module)
            self._fail(info, f"{type(error).__name__}: {error}")

    def _load_entry_points(self) -> None:
        allowed = os.environ.get("SENDVAE_LOAD_PLUGINS")
        allowed_names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else ep.name
            if allowed_names is not None and ep.name not in allowed_names and dist_name not in allowed_names:
                continue
            if ep.name in self.plugins:
                continue  # the same distribution seen twice on sys.path
            version = dist.version if dist is not None else "?"
            origin = f"entry point of {dist_name}"
            try:
                module = ep.load()
            except Exception as error:  # noqa: BLE001
                self._fail(PluginInfo(ep.name, version, origin), f"{type(error).__name__}: {error}")
                continue
            self._add(ep.name, module, version, origin)

    def _fail(self, info: PluginInfo, message: str) -> None:
        info.error = message
        self.plugins[info.name] = info
        self.problems.append(f"plugin {info.name!r} ({info.origin}) was not loaded: {message}")

    def _collect(self, kind: str, only: str | None = None) -> None:
        hook_name, _ = KINDS[kind]
        hook = getattr(self.pm.hook, hook_name)
        # Call each plugin's hook on its own, so we know who registered what and one faulty
        # plugin does not stop the rest. get_hookimpls() is in registration order: built-ins
        # first, so a built-in name is never taken over silently by an outside plugin.
        for impl in hook.get_hookimpls():
            plugin = impl.plugin_name
            if only is not None and plugin != only:
                continue
            found: list[Any] = []
            try:
                impl.function(register=found.append)
            except Exception as error:  # noqa: BLE001
                self._fail(self.plugins[plugin], f"{hook_name} raised {type(error).__name__}: {error}")
                continue
            for spec in found:
                if not isinstance(spec, SPEC_TYPES[kind]):
                    self.problems.append(f"plugin {plugin!r}: {hook_name} registered {type(spec).__name__}, "
                                         f"expected {SPEC_TYPES[kind].__name__}; ignored")
                    continue
                self._store(kind, spec, plugin)

    def _store(self, kind: str, spec: Any, plugin: str) -> None:
        table = self.components[kind]
        if spec.name in table:
            self.problems.append(
                f"{KINDS[kind][1]} {spec.name!r} from plugin {plugin!r} ignored: "
                f"already registered by {table[spec.name].plugin!r}"
            )
            return
        table[spec.name] = Registered(spec, plugin)
        self.plugins[plugin].registered.setdefault(kind, []).append(spec.name)
        for alias in getattr(spec, "aliases", ()):
            self._aliases[kind].setdefault(alias, spec.name)

    # -- lookups ---------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return list(self.components[kind])

    def has(self, kind: str, name: str) -> bool:
        """Whether `name` (or an alias) is registered."""
        return self._aliases[kind].get(name, name) in self.components[kind]

    def get(self, kind: str, name: str) -> Any:
        table = self.components[kind]
        name = self._aliases[kind].get(name, name)
        if name in table:
            return table[name].spec
        raise UserError(unknown_name_message(KINDS[kind][1], name, list(table) + list(self._aliases[kind])))

    def plugin_of(self, kind: str, name: str) -> str:
        return self.components[kind][self._aliases[kind].get(name, name)].plugin

    def teacher(self, name: str):
        return self.get("teacher", name)

    def dataset(self, name: str):
        return self.get("dataset", name)

    def vae_base(self, name: str):
        return self.get("vae_base", name)

    def generator(self, name: str):
        return self.get("generator", name)

    def metric(self, name: str):
        return self.get("metric", name)


def unknown_name_message(what: str, name: str, available: list[str]) -> str:
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(sorted(available)) if available else "none are installed"
    return f"unknown {what} {name!r}.{hint} Available: {listing}."


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    if _registry is None:
        _registry = Registry()
    return _registry


def reset_registry() -> None:
    """Forget the cached registry (tests that change sys.path or the environment use this)."""
    global _registry
    _registry = None
