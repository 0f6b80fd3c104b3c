"""One config pattern: every stage's settings validate at construction and round-trip."""

from __future__ import annotations

import json

import pytest

from sciml._config import Config
from sciml._errors import InputError
from sciml._ude import UDEConfig
from sciml.classify._config import ClassifierConfig
from sciml.cnf._train import CNFConfig
from sciml.discover import DiscoveryConfig

CONFIGS = [DiscoveryConfig, UDEConfig, CNFConfig, ClassifierConfig]
#: One invalid setting per config, and a word its message must contain.
INVALID = {
    DiscoveryConfig: ({"holdout": 2.0}, "holdout"),
    UDEConfig: ({"width": 0}, "width"),
    CNFConfig: ({"ema": 1.5}, "ema"),
    ClassifierConfig: ({"model": "mlp"}, "model"),
}


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_round_trip_through_json(cls: type[Config]) -> None:
    config = cls()
    again = cls.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.digest() == config.digest()


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_invalid_setting_refused_at_construction(cls: type[Config]) -> None:
    changes, word = INVALID[cls]
    with pytest.raises(InputError, match=f"{cls.__name__}: .*{word}"):
        cls(**changes)
    with pytest.raises(InputError, match=word):
        cls().replace(**changes)  # replace validates too


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_unknown_key_refused_by_name(cls: type[Config]) -> None:
    with pytest.raises(InputError, match="unknown setting.*no_such_setting"):
        cls.from_dict({"no_such_setting": 1})


def test_digest_changes_with_any_setting_and_extra() -> None:
    base = DiscoveryConfig()
    assert base.digest() != base.replace(seed=1).digest()
    nested = base.replace(ude=base.ude.replace(width=16))
    assert base.digest() != nested.digest()
    assert base.digest("data-a") != base.digest("data-b")


def test_nested_config_and_engines_normalised() -> None:
    config = DiscoveryConfig.from_dict({"engines": ["SINDy", " operon"], "ude": {"width": 8}})
    assert config.engines == ("sindy", "operon")
    assert config.ude == UDEConfig(width=8)
    assert DiscoveryConfig(engines="sindy,pysr").engines == ("sindy", "pysr")
    with pytest.raises(InputError, match="unknown engine"):
        DiscoveryConfig(engines=("sindy", "eureqa"))


@pytest.mark.parametrize(
    ("changes", "word"),
    [
        ({"windows": (0.5, 0.25)}, "increasing"),
        ({"width": 5000}, "at most"),
        ({"depth": 17}, "depth"),
    ],
)
def test_ude_config_is_the_one_place_its_rules_live(changes, word) -> None:
    """The flow's parameter model only describes the settings: UDEConfig's message is its
    validation error."""
    from pydantic import ValidationError

    from pipelines.params import UDESettings

    with pytest.raises(InputError, match=word):
        UDEConfig(**changes)
    with pytest.raises(ValidationError, match=f"UDEConfig: .*{word}"):
        UDESettings(**changes)
    assert UDESettings(width=8).overrides() == {"width": 8}
