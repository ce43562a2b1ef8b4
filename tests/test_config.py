import pytest

from ftviz.config import load_config, parse_override
from ftviz.errors import FtvizError


def test_defaults_and_file(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('[train]\nepochs = 2\nlr = 0.01\n[model]\nname = "vit_tiny"\noptions = {hidden_size = 64}\n')
    config = load_config(path)
    assert config.name == "exp"  # the file's stem when the file names no run
    assert config.train.epochs == 2.0 and isinstance(config.train.epochs, float)
    assert config.train.lr == 0.01
    assert config.model.options == {"hidden_size": 64}
    assert config.data.dataset == "digits"


def test_overrides_are_typed():
    config = load_config(None, ["train.epochs=1", "data.noise_rate=0.2", "name=x", "render.thumbnails=false",
                                "model.options={patch_size=8}"])
    assert config.train.epochs == 1.0
    assert config.data.noise_rate == 0.2
    assert config.name == "x"
    assert config.render.thumbnails is False
    assert config.model.options == {"patch_size": 8}


def test_bare_word_values():
    assert parse_override("model.name=vit_tiny") == (["model", "name"], "vit_tiny")


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs_=1", "unknown config key 'train.epochs_'"),
        ("trian.epochs=1", "unknown config key 'trian'"),
        ("train.epochs=lots", "wants float"),
        ("data.noise_rate=1.5", "noise_rate"),
        ("train=3", "is a section"),
        ("epochs", "KEY=VALUE"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(FtvizError, match=message):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(FtvizError, match="no experiment file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(FtvizError, match="not valid TOML"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[train]\nepoch = 3\n")
    with pytest.raises(FtvizError, match="unknown config key 'train.epoch'"):
        load_config(unknown)
