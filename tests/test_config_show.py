"""``ptypinn config show`` and the example configs in configs/: every field is described, the
printed reference is itself a valid config holding the defaults, and the examples load."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from ptypinn import io
from ptypinn.cli import main
from ptypinn.config import (SECTIONS, Config, ConfigError, build_config, config_reference,
                            field_docs)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_every_field_of_every_section_is_listed_with_a_description():
    docs = field_docs()
    expected = [(s, f.name) for s in SECTIONS
                for f in dataclasses.fields(getattr(Config(), s))]
    assert [(d.section, d.name) for d in docs] == expected
    undocumented = [f"{d.section}.{d.name}" for d in docs if len(d.description) < 8]
    assert undocumented == []
    assert all("\n" not in d.description and "``" not in d.description for d in docs)


def test_units_come_from_the_name_suffix():
    by_name = {(d.section, d.name): d for d in field_docs()}
    assert by_name[("simulation", "object_size_px")].unit == "px"
    assert by_name[("simulation", "object_phase_max_rad")].unit == "rad"
    assert by_name[("train", "max_time_s")].unit == "s"
    assert by_name[("train", "epochs")].unit == ""
    assert by_name[("refine", "max_position_shift_px")].unit == "px"
    assert by_name[("simulation", "object_amplitude_range")].default == [0.3, 1.0]


def test_reference_is_a_config_holding_the_defaults():
    text = config_reference()
    assert build_config(yaml.safe_load(text)) == Config()
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("max_time_s:"))
    assert "# [s] Wall-time cap" in line
    for d in field_docs():
        assert f"  {d.name}: " in text


def test_one_section_and_an_unknown_one():
    text = config_reference("refine")
    assert list(yaml.safe_load(text)) == ["refine"]
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        field_docs("trian")


def test_cli_config_show(capsys):
    assert main(["config", "show", "infer"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["infer"]["batch_size"] is None  # automatic
    assert yaml.safe_load(out)["infer"]["channels_last"] is True
    assert "crop_px: null" in out and "[px]" in out
    assert main(["config", "show", "trian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'train'" in err[0]


@pytest.mark.parametrize("name, check", [
    ("train.yaml", lambda c: c.grouping.gridsize == 2 and c.train.epochs == 30),
    ("infer.yaml", lambda c: c.infer.batch_size is None and c.refine.epochs == 0),
    ("reconstruct.yaml", lambda c: c.train.epochs == 50 and c.refine.epochs == 50),
])
def test_example_configs_load(name, check):
    path = CONFIGS / name
    text = path.read_text()
    assert text.lstrip().startswith("#") and text.count("#") >= 10  # commented
    cfg = io.load_config(path)
    assert check(cfg)
