import pytest

from recipes.parse import parse_recipe
from tricks.errors import ConfigError
from tricks.registry import Param, Registry, TrickSpec, close_matches


def test_param_coerces_and_checks():
    alpha = Param("alpha", float, 0.3, low=0, low_open=True)
    assert alpha.coerce("0.5") == 0.5
    with pytest.raises(ConfigError, match=r"^alpha=0.0 is out of range; allowed: \(0, inf\)$"):
        alpha.coerce("0")
    with pytest.raises(ConfigError, match=r"^alpha='x': alpha must be a number$"):
        alpha.coerce("x")
    on = Param("on", bool, True)
    assert (on.coerce("off"), on.coerce("TRUE")) == (False, True)
    p = Param("p", float, 0.1, low=0, high=1, high_open=True)
    assert p.allowed() == "[0, 1)"
    with pytest.raises(ConfigError, match="out of range; allowed: \\[0, 1\\)"):
        p.check(1.0)
    where = Param("where", str, "before", choices=("before", "after"))
    with pytest.raises(ConfigError, match="^where='middle' is not allowed; choose one of before, after$"):
        where.coerce("middle")
    k = Param("k", int, 6, low=1)
    with pytest.raises(ConfigError, match="k must be an integer"):
        k.coerce("2.5")


def test_trick_spec_resolves_defaults_and_rejects_unknown_keys():
    spec = TrickSpec("demo", lambda recipe, **p: p, (Param("a", int, 1), Param("b", str, "x")), "d", "paper", ())
    assert spec.resolve({"b": "y"}) == {"a": 1, "b": "y"}
    with pytest.raises(ConfigError, match="^trick 'demo' has no parameter 'c'; its parameters: a, b$"):
        spec.resolve({"c": 1})


def test_registry_refuses_a_name_twice_and_suggests_close_names():
    reg = Registry("thing")
    reg.add("mixup", 1)
    with pytest.raises(ConfigError, match="registered twice"):
        reg.add("mixup", 2)
    with pytest.raises(ConfigError, match="^unknown thing 'mixpu'; did you mean 'mixup'\\?$"):
        reg.get("mixpu")
    assert close_matches("resnet2", ["resnet20", "resnet56", "wrn28_10"])[0] == "resnet20"


def test_unknown_trick_term_lists_close_matches():
    with pytest.raises(ConfigError, match="^unknown recipe term 'baselne'; did you mean 'baseline'"):
        parse_recipe("baselne")
