"""The plugin layer through the real entry-point path: fake *.dist-info folders on sys.path."""

import json
import textwrap

import pytest

from sendvae_cli.errors import UserError
from sendvae_cli.registry import Registry, unknown_name_message

GOOD = '''
from sendvae_cli import hookimpl, TeacherSpec, DatasetSpec

@hookimpl
def register_teachers(register):
    register(TeacherSpec(name="fake-teacher", family="Fake", width=48, patch_size=8,
                         factory="fake_good:build", source="nowhere", licence="MIT"))
    register(TeacherSpec(name="dinov2-b", family="Fake", width=1, patch_size=1, factory="fake_good:build"))

@hookimpl
def register_datasets(register):
    register(DatasetSpec(name="fake-data", description="nothing", factory="fake_good:build"))
'''
BROKEN = "raise ImportError('this plugin is broken on purpose')\n"
TYPO = '''
from sendvae_cli import hookimpl

@hookimpl
def register_teacher(register):  # misspelled: the hook is register_teachers
    pass
'''
RAISES = '''
from sendvae_cli import hookimpl

@hookimpl
def register_teachers(register):
    raise RuntimeError("registration failed")
'''


def make_dist(root, dist_name, version, module, source, ep_name=None):
    info = root / f"{dist_name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[sendvae]\n{ep_name or module} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    make_dist(tmp_path, "fake-good", "0.3.1", "fake_good", GOOD)
    make_dist(tmp_path, "fake-broken", "1.0", "fake_broken", BROKEN)
    make_dist(tmp_path, "fake-typo", "2.0", "fake_typo", TYPO)
    make_dist(tmp_path, "fake-raises", "0.1", "fake_raises", RAISES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_entry_point_plugins_load_and_failures_are_isolated(plugin_path, monkeypatch):
    monkeypatch.delenv("SENDVAE_LOAD_PLUGINS", raising=False)
    registry = Registry()
    assert registry.plugins["fake_good"].version == "0.3.1"
    assert registry.plugins["fake_good"].origin == "entry point of fake-good"
    assert registry.plugin_of("teacher", "fake-teacher") == "fake_good"
    assert registry.dataset("fake-data").description == "nothing"
    # The built-in keeps its name; the clash is reported.
    assert registry.plugin_of("teacher", "dinov2-b") == "sendvae.teachers"
    problems = "\n".join(registry.problems)
    assert "fake_broken" in problems and "broken on purpose" in problems
    assert "fake_typo" in problems and "register_teacher" in problems
    assert "fake_raises" in problems and "registration failed" in problems
    assert "'dinov2-b' from plugin 'fake_good' ignored" in problems
    # Each failure is reported exactly once.
    assert sum("fake_broken" in p for p in registry.problems) == 1
    assert registry.plugins["fake_broken"].error
    # Built-ins still work.
    assert len([n for n in registry.names("teacher") if registry.plugin_of("teacher", n) == "sendvae.teachers"]) >= 14


def test_load_plugins_variable_restricts_outside_plugins(plugin_path, monkeypatch):
    monkeypatch.setenv("SENDVAE_LOAD_PLUGINS", "fake-good")
    registry = Registry()
    assert "fake_good" in registry.plugins
    assert "fake_broken" not in registry.plugins and not registry.problems[1:]
    monkeypatch.setenv("SENDVAE_LOAD_PLUGINS", "")
    registry = Registry()
    assert all(info.origin == "built-in" for info in registry.plugins.values())


def test_cli_plugins_shows_outside_plugin(plugin_path, cli):
    import os

    env = {"PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")]),
           "SENDVAE_LOAD_PLUGINS": "fake-good,fake-broken"}
    proc = cli("plugins", "--json", env=env)
    listing = json.loads(proc.stdout)
    good = next(p for p in listing["plugins"] if p["name"] == "fake_good")
    assert good["version"] == "0.3.1" and good["registers"]["teacher"] == ["fake-teacher"]
    assert any(t["name"] == "fake-teacher" and t["plugin"] == "fake_good" for t in listing["teachers"])
    assert proc.stderr.count("fake_broken") == 1  # reported once, as a warning


def test_unknown_names_list_available_and_closest(fresh_registry):
    registry = Registry(load_outside=False)
    with pytest.raises(UserError) as info:
        registry.teacher("dinov2-bb")
    message = str(info.value)
    assert "Did you mean 'dinov2-b'" in message and "clip-b16" in message
    assert registry.teacher("dinov2-vit-b").name == "dinov2-b"  # REPA's name is an alias
    assert "none are installed" in unknown_name_message("generator", "SiT-XL/1", [])
