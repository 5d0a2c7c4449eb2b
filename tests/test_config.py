"""Config: YAML + overrides, validation, unknown keys with suggestions, round trip."""

import pytest

from ptypinn.config import (Config, ConfigError, SimulationConfig, apply_overrides, from_dict,
                            to_dict)
from ptypinn.io import load_config


def test_defaults_round_trip_through_dict():
    cfg = Config()
    assert from_dict(Config, to_dict(cfg)) == cfg


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("simulation:\n  object_kind: grf\n  photons_per_pattern: 1e6\ntrain:\n  epochs: 3\n")
    cfg = load_config(str(p), ["train.epochs=5", "grouping.gridsize=2", "simulation.seed=7",
                               "simulation.photons_per_pattern=null"])
    assert cfg.simulation.object_kind == "grf"
    assert cfg.simulation.photons_per_pattern is None
    assert (cfg.train.epochs, cfg.grouping.gridsize, cfg.simulation.seed) == (5, 2, 7)


def test_unknown_key_names_key_and_suggests():
    with pytest.raises(ConfigError, match=r"train\.epoch.*did you mean 'train\.epochs'"):
        from_dict(Config, {"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'.*did you mean 'train'"):
        from_dict(Config, {"trian": {}})


def test_wrong_types_and_values():
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer"):
        from_dict(Config, {"train": {"epochs": "many"}})
    with pytest.raises(ConfigError, match=r"simulation\.object_kind: expected one of"):
        from_dict(Config, {"simulation": {"object_kind": "cat"}})
    with pytest.raises(ConfigError, match=r"grouping\.gridsize"):
        from_dict(Config, {"grouping": {"gridsize": 4}})
    with pytest.raises(ConfigError, match=r"--set"):
        apply_overrides({}, ["train.epochs"])


def test_frozen_and_effective_step():
    s = SimulationConfig(probe_radius_px=16, overlap_fraction=0.75)
    assert s.effective_step_px == pytest.approx(8.0)
    with pytest.raises(Exception):
        s.seed = 3  # type: ignore[misc]


def test_missing_config_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such config file"):
        load_config(str(tmp_path / "nope.yaml"))
