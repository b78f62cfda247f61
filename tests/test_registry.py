from __future__ import annotations

import json
import subprocess
import sys

import pytest

from robench.core.errors import UnknownNameError
from robench.core.registry import DATASETS, Registry


def test_decorator_and_lookup():
    reg = Registry("widget")

    @reg.register("alpha", summary="first")
    class Alpha:
        pass

    assert reg.get("alpha") is Alpha
    assert reg.names() == ["alpha"]
    assert reg.info()[0]["summary"] == "first"


def test_lazy_entry_is_imported_on_first_use():
    reg = Registry("widget")
    reg.add_lazy("ordered", "collections:OrderedDict", summary="lazy one")
    entry = reg.entry("ordered")
    assert entry.obj is None  # nothing imported yet
    import collections

    assert reg.get("ordered") is collections.OrderedDict
    assert entry.obj is collections.OrderedDict


def test_unknown_name_suggests():
    reg = Registry("widget")
    reg.add("gaussian", object)
    with pytest.raises(UnknownNameError, match="did you mean 'gaussian'"):
        reg.get("gausian")


def test_entry_point_plugins(monkeypatch):
    """A third-party package's entry point in group robench.widgets becomes a lazy entry."""
    from importlib.metadata import EntryPoint

    import robench.core.registry as R

    eps = [EntryPoint(name="plugged", value="fractions:Fraction", group="robench.widgets")]
    monkeypatch.setattr(R, "entry_points", lambda group: [e for e in eps if e.group == group])
    reg = Registry("widget")
    from fractions import Fraction

    assert "plugged" in reg.names()
    assert reg.get("plugged") is Fraction
    assert reg.entry("plugged").origin == "entry-point"


def test_duplicate_builtin_registration_is_an_error():
    reg = Registry("widget")
    reg.add("x", int)
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("x", float)


def test_a_class_gets_its_name_from_its_registration_and_may_not_contradict_it():
    class Base:
        name = ""

    reg = Registry("widget")

    @reg.register("w-one")
    class One(Base):
        pass

    assert One.name == "w-one" and reg.get("w-one") is One
    with pytest.raises(ValueError, match="registered as 'w-three'"):

        @reg.register("w-three")
        class Two(Base):
            name = "w-two"

    # every built-in plugin class carries the name it is registered under
    from robench.core.registry import ATTACKS, DEFENSES

    for r in (ATTACKS, DATASETS, DEFENSES):
        for n in r.names():
            obj = r.get(n)
            if isinstance(obj, type) and hasattr(obj, "name"):
                assert obj.name == n, (r.kind, n, obj.name)


def test_datasets_registered():
    names = set(DATASETS.names())
    assert {"mini", "mini-2afc", "kadid10k", "tid2013", "live", "csiq", "pipal", "pieapp", "bapps-2afc"} <= names


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "robench.cli", *args], capture_output=True, text=True, **kw)


def test_cli_ls_json_lists_datasets():
    r = _cli("ls", "datasets", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert all({"name", "summary"} <= set(row) for row in rows)
    names = {row["name"] for row in rows}
    assert {"mini", "mini-2afc", "kadid10k", "tid2013", "live", "csiq", "pipal", "pieapp", "bapps-2afc"} <= names


@pytest.mark.parametrize("kind", ["models", "attacks", "defenses"])
def test_cli_ls_other_registries_are_json_lists(kind):
    r = _cli("ls", kind, "--json")
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout), list)


def test_cli_unknown_names_exit_2_with_suggestion():
    r = _cli("data", "info", "kadid10", "--json")
    assert r.returncode == 2
    assert "did you mean 'kadid10k'" in r.stderr
    assert r.stdout == ""  # nothing half-written to stdout
    r = _cli("ls", "modles")
    assert r.returncode == 2 and "did you mean 'models'" in r.stderr


def test_cli_help_lists_groups():
    r = _cli("--help")
    assert r.returncode == 0
    for group in ("ls", "data"):
        assert group in r.stdout


def test_cli_ls_one_attack_lists_its_parameters():
    r = _cli("ls", "attacks", "pgd", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["steps"]["budget"] is True and rows["steps"]["default"] == 20 and rows["steps"]["quick"] == 80
    assert all(row["summary"] for row in rows.values())
    bad = _cli("ls", "attacks", "pgdd")
    assert bad.returncode != 0 and "did you mean 'pgd'" in bad.stderr
