import pytest

from bench.budgets import scaled
from recipes.parse import parse_recipe
from tricks.errors import ConfigError
from tricks.registry import TRICKS, Param, Registry, TrickSpec, close_matches, conflict


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


def test_what_a_trick_needs_is_declared_at_its_registration():
    specs = [TRICKS.get(name) for name in TRICKS.names()]
    assert sorted(s.name for s in specs if s.reads_labels) == ["klmixup", "lsmooth", "mixup", "onehot"]
    assert sorted(s.name for s in specs if s.mixes_batch) == ["klmixup", "mixup"]  # MixUp's own `mixes_batch`
    assert [s.name for s in specs if s.cudagraph_unsafe] == []
    assert sorted((s.name, other) for s in specs for other, _ in s.conflicts) == [
        ("klmixup", "mixup"), ("lsmooth", "onehot"), ("swish", "leakyrelu")]
    assert all(other in TRICKS for s in specs for other, _ in s.conflicts)
    counted = [(s.name, q.name, q.generations, q.images_per_class) for s in specs for q in s.params
               if q.generations or q.images_per_class]
    assert counted == [("refine", "gens", True, False), ("refine", "weak", False, True)]


def test_a_conflict_is_refused_whichever_trick_declares_it():
    assert conflict(["mixup", "klmixup"]) == conflict(["klmixup", "mixup"]) == (
        "tricks klmixup and mixup both mix the batch; keep one (klmixup is mixup with a KL loss)")
    assert conflict(["onehot", "mixup", "swish"]) is None
    with pytest.raises(ConfigError, match="^tricks leakyrelu and swish both replace the activations; keep one$"):
        parse_recipe("baseline+leakyrelu+swish")


def test_a_budget_scales_the_params_that_count_images_per_class_and_generations():
    full = parse_recipe("baseline+refine:weak=500")
    smoke = scaled(full, factor=1 / full.epochs, subset=1000, test_subset=100, bs=128, max_gens=1)
    refine = dict(dict(smoke.tricks)["refine"])
    assert (refine["weak"], refine["gens"]) == (13, 1)  # 500 * 1000 / 50000 = 10 < one batch of 128: 13 per class
    longer = scaled(parse_recipe("baseline+refine:weak=2000"), factor=0.1, subset=1000, test_subset=100, bs=128)
    refine = dict(dict(longer.tricks)["refine"])
    assert (refine["weak"], refine["gens"]) == (40, 4)  # 2000 * 1000 / 50000; no cap without max_gens


def test_bench_perf_measures_a_trick_that_counts_generations_with_one():
    from bench.perf import composable_tricks

    measured = dict(composable_tricks()[0])
    assert (measured["refine"], measured["mixup"], measured["dynarefine"]) == (
        "baseline+refine:gens=1", "baseline+mixup", "baseline+dynarefine")


def test_a_callback_built_directly_checks_its_arguments_with_its_registered_params():
    from torch import nn

    from tricks import (EMA, SGDR, BNMomentum, ChannelDrop, DynamicRefine, FCDropout, FinalBN, KLMixUp,
                        LabelRefinery, LeakyReLUSwap, Lookahead, MixUp, ResidualDropout, RotationHead, StepDecay)

    refused = [(lambda: MixUp(alpha=0), "mixup: alpha=0 is out of range; allowed: (0, inf)"),
               (lambda: MixUp(mix="both"), "mixup: mix='both' is not allowed; choose one of labels, losses"),
               (lambda: KLMixUp(alpha=-1.0), "klmixup: alpha=-1.0 is out of range; allowed: (0, inf)"),
               (lambda: LabelRefinery(nn.Linear(2, 2), loss="mse"),
                "refine: loss='mse' is not allowed; choose one of kl, ce"),
               (lambda: DynamicRefine(weight=1.5), "dynarefine: weight=1.5 is out of range; allowed: [0, 1]"),
               (lambda: DynamicRefine(start_epoch=0), "dynarefine: start_epoch=0 is out of range; allowed: [1, inf)"),
               (lambda: ResidualDropout(p=1.0), "resdrop: p=1.0 is out of range; allowed: [0, 1)"),
               (lambda: FCDropout(where="middle"),
                "fcdrop: where='middle' is not allowed; choose one of before, after"),
               (lambda: FinalBN(position="inside"),
                "finalbn: position='inside' is not allowed; choose one of features, logits"),
               (lambda: EMA(mode="fast"), "ema: mode='fast' is not allowed; choose one of plain, lr_wd, noschedule"),
               (lambda: EMA(decay=1.0), "ema: decay=1.0 is out of range; allowed: [0, 1)"),
               (lambda: SGDR(unit="batch"), "sgdr: unit='batch' is not allowed; choose one of epoch, iter"),
               (lambda: SGDR(cycle_mul=0.5), "sgdr: mult=0.5 is out of range; allowed: [1, inf)"),
               (lambda: StepDecay(gamma=1.0), "stepdecay: gamma=1.0 is out of range; allowed: (0, 1)"),
               (lambda: Lookahead(k=0), "lookahead: k=0 is out of range; allowed: [1, inf)"),
               (lambda: ChannelDrop(max=0), "channeldrop: max=0 is out of range; allowed: [1, inf)"),
               (lambda: BNMomentum(momentum=2.0), "bnmom: momentum=2.0 is out of range; allowed: [0, 1]"),
               (lambda: RotationHead(weight=-1.0), "rotation: weight=-1.0 is out of range; allowed: [0, inf)"),
               (lambda: LeakyReLUSwap(slope=-0.1), "leakyrelu: slope=-0.1 is out of range; allowed: [0, inf)")]
    for make, message in refused:
        with pytest.raises(ConfigError) as e:
            make()
        assert str(e.value) == message
    assert (MixUp(alpha=1).alpha, DynamicRefine(weight=1.0).weight, FCDropout(p=0.0).drop_p) == (1, 1.0, 0.0)
