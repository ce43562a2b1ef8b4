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


# ---- declared constraints: one validator, one-line messages ------------------------------------
from ftviz.config import (  # noqa: E402
    ExperimentConfig,
    Interval,
    Options,
    apply_values,
    check_probe_size,
    check_section,
    config_from_manifest,
    sections,
    validate,
)

# One bad value per declared constraint; what the message must name besides the key.
BAD_VALUES = {
    ("", "name"): ("a/b", "plain folder name"), ("", "seed"): (-1, ">= 0"),
    ("data", "noise_rate"): (1.0, "[0, 1)"), ("data", "noise"): ("pairs", "'symmetric' or 'asymmetric'"),
    ("data", "probe"): ("val", "'train' or 'test'"), ("data", "probe_size"): (-1, ">= 0"),
    ("data", "train_size"): (-5, ">= 0"), ("data", "test_fraction"): (1.0, "(0, 1)"),
    ("data", "image_size"): (0, ">= 1"),
    ("train", "epochs"): (-1.0, ">= 0"), ("train", "batch_size"): (0, ">= 1"), ("train", "grad_accum"): (0, ">= 1"),
    ("train", "lr"): (0.0, "> 0"), ("train", "weight_decay"): (-0.1, ">= 0"),
    ("train", "warmup_ratio"): (1.5, "[0, 1]"),
    ("train", "snapshot_every"): (0, ">= 1"), ("train", "eval_batch_size"): (0, ">= 1"),
    ("train", "device"): ("gpu", "'cuda:N'"), ("train", "precision"): ("fp16", "'auto', 'fp32' or 'bf16'"),
    ("train", "embed_precision"): ("int8", "'bf16'"), ("train", "save_weights"): ("best", "'latest', 'none' or 'all'"),
    ("train", "max_steps"): (-1, ">= 0"), ("train", "dynamics"): ("yes", "true or false"),
    ("train", "dynamics_features"): (1, "true or false"),
    ("train", "follow"): ("yes", "true or false"), ("train", "seed"): (-2, ">= -1"),
    ("data", "fix"): ("fixit", "'auto', 'relabel' or 'drop'"),
    ("score", "k"): (0, ">= 1"), ("score", "top"): (-1, ">= 0"), ("score", "method"): ("faiss", "'knn'"),
    ("score", "device"): ("tpu", "'cpu'"),
    ("detect", "rule"): ("first", "'auto', 'history' or 'last'"), ("detect", "learnt_fraction"): (0.0, "(0, 1]"),
    ("detect", "min_flagged"): (1.5, "[0, 1]"), ("detect", "knn"): (0, ">= 1"),
    ("project", "method"): ("isomap", "'pca', 'tsne' or 'umap'"), ("project", "basis"): ("global", "'shared'"),
    ("project", "reference"): ("middle", "frame index"), ("project", "knn"): (0, ">= 1"),
    ("project", "knn_sample"): (0, ">= 1"), ("project", "first_iter"): (-1, ">= 0"), ("project", "iter"): (-1, ">= 0"),
    ("project", "last_iter"): (-2, ">= 0"), ("project", "perplexity"): (0.0, "> 0"),
    ("project", "neighbors"): (1, ">= 2"),
    ("render", "color_by"): ("rainbow", "'suspicion'"), ("render", "point_size"): (0.0, "> 0"),
    ("render", "frame_ms"): (0, ">= 1"), ("render", "thumbnails"): ("yes", "true or false"),
    ("render", "transition_ms"): (-1, ">= 0"), ("render", "axes"): ("log", "'fixed' or 'per_frame'"),
    ("render", "thumbnail_size"): (0, ">= 1"), ("render", "thumbnail_format"): ("webp", "'auto', 'png' or 'jpeg'"),
    ("render", "video_width"): (319, ">= 320"), ("render", "video_height"): (239, ">= 240"),
    ("render", "video_tween"): (-1, ">= 0"),
}


def _declared_constraints():
    config = ExperimentConfig()
    found = {("", key) for key in type(config).constraints}
    for name, section in sections(config).items():
        found |= {(name, key) for key in type(section).constraints}
    return found


def test_every_declared_constraint_has_a_bad_value_here():
    # A constraint added to a section without a case below fails here, so none goes untested.
    assert _declared_constraints() == set(BAD_VALUES)


@pytest.mark.parametrize("where", sorted(BAD_VALUES), ids=lambda w: ".".join(filter(None, w)))
def test_each_constraint_rejects_its_bad_value_in_one_line(where):
    section_name, key = where
    bad, allowed = BAD_VALUES[where]
    config = ExperimentConfig()
    setattr(getattr(config, section_name) if section_name else config, key, bad)
    dotted = f"{section_name}.{key}" if section_name else key
    with pytest.raises(FtvizError) as caught:
        validate(config)
    message = str(caught.value)
    assert message.startswith(f"{dotted} must be ") and allowed in message and repr(bad) in message
    assert "\n" not in message


def test_defaults_pass_and_constraint_keys_are_fields():
    config = ExperimentConfig()
    validate(config)
    for name, section in {"": config, **sections(config)}.items():
        fields = set(section.__dataclass_fields__)
        assert set(type(section).constraints) <= fields, name


def test_constraint_wording():
    assert str(Interval(int, 1)) == "an integer >= 1"
    assert str(Interval(float, 0, 1, closed="left")) == "a number in [0, 1)"
    assert str(Interval(float, 0, closed="neither")) == "a number > 0"
    assert str(Options("a", "b", "c")) == "'a', 'b' or 'c'"
    assert Interval(float, 0, 1).accepts(1) and not Interval(int, 0).accepts(True)
    assert not Interval(int, 0).accepts(2.0)  # an integer field refuses a float built in code


def test_rules_that_read_several_fields():
    with pytest.raises(FtvizError, match=r"^train.epochs must be > 0 \(or set train.max_steps\)$"):
        load_config(None, ["train.epochs=0"])
    assert load_config(None, ["train.epochs=0", "train.max_steps=4"]).train.max_steps == 4
    with pytest.raises(FtvizError, match="project.first_iter must be > 0 for t-SNE"):
        load_config(None, ["project.method=tsne", "project.first_iter=0"])
    assert load_config(None, ["project.first_iter=0"]).project.first_iter == 0  # PCA has no iterations
    assert load_config(None, ['project.reference="-1"']).project.reference == "-1"


def test_probe_smaller_than_k_is_refused_at_config_time():
    # data.probe_size fixes the probe set before any data is loaded: refused before training.
    with pytest.raises(FtvizError, match=r"^score.k = 10 but the probe set has 10 samples; set score.k to at most 9"):
        load_config(None, ["data.probe_size=10"])
    # So does data.train_size for a probe drawn from the training split; not for the test split.
    with pytest.raises(FtvizError, match="probe set has 8 samples"):
        load_config(None, ["data.train_size=8"])
    assert load_config(None, ["data.train_size=8", "data.probe=test"]).data.train_size == 8
    assert load_config(None, ["data.probe_size=11"]).data.probe_size == 11
    # Otherwise the size is known once the splits are loaded.
    config = load_config(None, [])
    check_probe_size(config, 11)
    with pytest.raises(FtvizError, match="score.k = 10 but the probe set has 7 samples"):
        check_probe_size(config, 7)


def test_sections_validate_alone_with_their_name():
    from ftviz.config import ScoreConfig

    check_section(ScoreConfig())
    with pytest.raises(FtvizError, match=r"^score.method must be 'auto', 'knn' or 'cleanlab', got 'x'$"):
        check_section(ScoreConfig(method="x"), "score")


def test_from_dict_round_trip():
    config = load_config(None, ["name=trip", "seed=3", "train.epochs=0.5", "score.k=4", "project.method=tsne",
                                "render.thumbnails=false", "model.options={hidden_size=64}", "data.probe=test"])
    again = ExperimentConfig.from_dict(config.to_dict())
    assert again == config and again is not config
    assert again.to_dict() == config.to_dict()
    assert "constraints" not in config.to_dict()["score"]  # declarations are not config keys
    assert config_from_manifest({"config": config.to_dict()}) == config
    assert config_from_manifest({}) == ExperimentConfig()  # a run.json without config: the defaults


def test_from_dict_is_strict():
    with pytest.raises(FtvizError, match="unknown config key 'score.kk'; known keys here: device, k, method, top"):
        ExperimentConfig.from_dict({"score": {"kk": 3}})
    with pytest.raises(FtvizError, match=r"^score.k must be an integer >= 1, got 0$"):
        ExperimentConfig.from_dict({"score": {"k": 0}})
    with pytest.raises(FtvizError, match="config key train.epochs wants float"):
        ExperimentConfig.from_dict({"train": {"epochs": "lots"}})


def test_apply_values_on_a_section_uses_its_prefix():
    from ftviz.config import DetectConfig

    section = DetectConfig()
    apply_values(section, {"knn": 3}, "detect.")
    assert section.knn == 3
    with pytest.raises(FtvizError, match="unknown config key 'detect.k'"):
        apply_values(section, {"k": 3}, "detect.")


def test_runner_sections_are_typed_not_none():
    # The stage table hands every runner its own section; the runners read no defaults of their own.
    import inspect

    from ftviz.config import DetectConfig, ProjectConfig, ScoreConfig
    from ftviz.detectors import detect_run
    from ftviz.project import project_run
    from ftviz.quality import score_run

    for runner, kind in ((score_run, ScoreConfig), (detect_run, DetectConfig), (project_run, ProjectConfig)):
        parameter = inspect.signature(runner).parameters["section"]
        assert parameter.default is inspect.Parameter.empty and parameter.annotation in (kind, kind.__name__)


def test_render_options_are_the_sections_fields():
    from ftviz.config import RenderConfig
    from ftviz.render.options import COLOR_MODES, render_options

    assert render_options(None) == render_options(RenderConfig()) == RenderConfig().__dict__
    assert render_options(RenderConfig(frame_ms=90))["frame_ms"] == 90
    assert list(COLOR_MODES) == list(type(RenderConfig()).constraints["color_by"].choices)
    with pytest.raises(FtvizError, match=r"^render.video_width must be an integer >= 320, got 100$"):
        render_options(RenderConfig(video_width=100))
