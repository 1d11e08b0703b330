"""duatm.config: schema defaults, YAML inheritance, overrides, clear errors, shipped configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from duatm.config import (
    MATCHER_MODES,
    ConfigError,
    DuATMConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_paper_image_recipe() -> None:
    cfg = load_config(None)
    assert isinstance(cfg, DuATMConfig)
    assert cfg == DuATMConfig()
    assert (cfg.model.backbone, cfg.model.pretrained, cfg.model.dim) == (
        "densenet121",
        "imagenet",
        256,
    )
    assert (cfg.data.height, cfg.data.width) == (256, 128)
    assert (cfg.data.num_identities, cfg.data.num_instances) == (10, 4)
    assert (cfg.optim.lr, cfg.optim.momentum) == (0.01, 0.9)
    assert (cfg.schedule.epochs, cfg.schedule.freeze_backbone_epochs) == (300, 100)
    assert (cfg.schedule.lr_decay_epoch, cfg.schedule.lr_decay_factor) == (250, 0.1)
    assert (cfg.loss.margin, cfg.loss.lambda1, cfg.loss.lambda2, cfg.loss.drop_prob) == (
        0.2,
        0.1,
        0.5,
        0.2,
    )
    assert cfg.schedule.iters_per_epoch is None


def test_base_chain_merges_in_order_and_resolves_relative_to_each_file(tmp_path: Path) -> None:
    write(tmp_path / "grand.yaml", "model:\n  dim: 32\noptim:\n  lr: 0.5\nseed: 1\n")
    write(tmp_path / "parent.yaml", "base: grand.yaml\noptim:\n  lr: 0.25\n")
    child = write(tmp_path / "sub" / "child.yaml", "base: ../parent.yaml\nseed: 3\n")
    cfg = load_config(child)
    assert cfg.model.dim == 32  # only the grandparent sets it
    assert cfg.optim.lr == 0.25  # the parent overrides the grandparent
    assert cfg.seed == 3  # the child overrides both
    assert cfg.optim.momentum == 0.9  # untouched keys keep the schema default


def test_inheritance_cycle_is_an_error_naming_the_files(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle") as info:
        load_config(tmp_path / "a.yaml")
    assert "a.yaml" in str(info.value) and "b.yaml" in str(info.value)


def test_self_inheritance_is_a_cycle(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_missing_base_names_the_file_that_asked_for_it(tmp_path: Path) -> None:
    child = write(tmp_path / "child.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml") as info:
        load_config(child)
    assert str(child) in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_overrides_are_parsed_with_their_types_and_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "optim:\n  lr: 0.5\nmodel:\n  pretrained: some/weights.pt\n")
    cfg = load_config(
        path,
        [
            "optim.lr=1e-3",
            "data.num_workers=0",
            "model.pretrained=null",
            "eval.flip=true",
            "schedule.iters_per_epoch=7",
            "out_dir=runs/x",
        ],
    )
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)
    assert cfg.data.num_workers == 0 and isinstance(cfg.data.num_workers, int)
    assert cfg.model.pretrained is None
    assert cfg.eval.flip is True
    assert cfg.schedule.iters_per_epoch == 7
    assert cfg.out_dir == "runs/x"


def test_later_override_wins() -> None:
    assert load_config(None, ["seed=1", "seed=2"]).seed == 2


def test_unknown_key_in_file_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path / "typo.yaml", "model:\n  dimm: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "model.dimm" in message and "'dim'" in message


def test_unknown_top_level_key_in_override() -> None:
    with pytest.raises(ConfigError, match="unknown key 'optimizer'") as info:
        load_config(None, ["optimizer.lr=0.1"])
    assert "override 'optimizer.lr=0.1'" in str(info.value) and "'optim'" in str(info.value)


def test_wrong_type_in_file_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "data:\n  height: tall\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "data.height" in str(info.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [("optim.lr=fast", "optim.lr"), ("model.dim=0.5", "model.dim"), ("amp=maybe", "amp")],
)
def test_wrong_type_in_override_names_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)) as info:
        load_config(None, [override])
    assert override in str(info.value)


def test_section_given_a_plain_value_names_the_section(tmp_path: Path) -> None:
    path = write(tmp_path / "flat.yaml", "model: densenet121\n")
    with pytest.raises(ConfigError, match="model must be a mapping") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_override_without_equals_sign_is_rejected() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.yaml", "model: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_top_level_list_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path / "list.yaml", "- 1\n"))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.mode=cosine"], "model.mode"),
        (["model.dim=0"], "model.dim"),
        (["data.num_identities=1"], "data.num_identities"),
        (["data.num_instances=1"], "data.num_instances"),
        (["data.flip_prob=1.5"], "data.flip_prob"),
        (["loss.drop_prob=-0.1"], "loss.drop_prob"),
        (["loss.drop_prob=1.0"], "loss.drop_prob"),
        (["model.backbone=vgg16"], "model.backbone"),
        (["data.dataset=cuhk03"], "data.dataset"),
        (["optim.lr=0"], "optim.lr"),
        (["optim.momentum=0", "optim.nesterov=true"], "optim.nesterov"),
        (["schedule.lr_decay_epoch=-1"], "schedule.lr_decay_epoch"),
        (["schedule.freeze_backbone_epochs=-1"], "schedule.freeze_backbone_epochs"),
        (["schedule.iters_per_epoch=0"], "schedule.iters_per_epoch"),
        (["eval.every=-1"], "eval.every"),
        (["eval.tile_mb=0"], "eval.tile_mb"),
        (["seed=-1"], "seed"),
        (["device=gpu"], "device"),
        (["log_every=0"], "log_every"),
        (["data.split=1"], "data.split"),  # Market-1501 has one split
        (["data.clip_len=0"], "data.clip_len"),
        (["data.clip_start=last"], "data.clip_start"),
        (["data.test_clip_mode=dense"], "data.test_clip_mode"),
        (["data.test_clip_len=0"], "data.test_clip_len"),
        (["data.test_clip_start=random"], "data.test_clip_start"),  # evaluation must repeat
        (["model.kind=film"], "model.kind"),
        (["model.kind=video"], "model.kind"),  # Market-1501 holds images
        (["data.dataset=mars"], "model.kind"),  # MARS holds tracklets
        (["model.rnn=transformer"], "model.rnn"),
        (["model.rnn_hidden=0"], "model.rnn_hidden"),
        (["model.frame_chunk=0"], "model.frame_chunk"),
        (["model.attention_init=eye"], "model.attention_init"),
        (
            [
                "data.dataset=mars",
                "model.kind=video",
                "model.mode=intra",
                "data.test_clip_mode=all",
            ],
            "model.mode",  # intra compares position i with position i: equal lengths only
        ),
    ],
)
def test_invalid_values_are_rejected_naming_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(key)} must be"):
        load_config(None, overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ["schedule.lr_decay_epoch=300"],  # decay never happens
        ["schedule.epochs=2"],  # a short run of a paper config: frozen and undecayed throughout
        ["schedule.freeze_backbone_epochs=0", "schedule.lr_decay_epoch=0"],
        ["device=cuda:1"],
        ["optim.nesterov=true"],
        [f"model.mode={MATCHER_MODES[-1]}"],
        ["data.clip_len=1", "data.clip_start=first", "data.test_clip_start=middle"],
        ["data.test_clip_mode=all"],
        ["data.dataset=mars", "model.kind=video", "model.rnn=lstm", "model.rnn_hidden=32"],
    ],
)
def test_boundary_values_are_accepted(overrides: list[str]) -> None:
    load_config(None, overrides)


def test_config_accepts_exactly_the_matcher_modes() -> None:
    from duatm.models import matching

    assert set(MATCHER_MODES) == {"dual", "intra", "inter", "avgpool"}  # paper Table 2
    assert tuple(matching.MATCHER_MODES) == MATCHER_MODES


def shipped_configs() -> list[Path]:
    found = sorted(CONFIGS.glob("*.yaml"))
    assert found, f"no YAML files in {CONFIGS}"
    return found


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    assert isinstance(load_config(path), DuATMConfig)


@pytest.mark.parametrize(
    ("name", "dataset", "weights"),
    [
        ("market1501", "market1501", (0.3, 0.9, 0.4)),
        ("dukemtmcreid", "dukemtmcreid", (0.1, 0.5, 0.6)),
    ],
)
def test_dataset_configs_reproduce_the_paper(name: str, dataset: str, weights: tuple) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.data.dataset == dataset
    assert (cfg.loss.lambda1, cfg.loss.lambda2, cfg.loss.drop_prob) == weights
    assert (cfg.optim.lr, cfg.optim.momentum) == (0.01, 0.9)
    assert (cfg.schedule.epochs, cfg.schedule.freeze_backbone_epochs) == (300, 100)
    assert cfg.optim.lr * cfg.schedule.lr_decay_factor == pytest.approx(0.001)
    assert cfg.schedule.epochs - cfg.schedule.lr_decay_epoch == 50  # lr 0.001 for the last 50
    assert (cfg.data.num_identities, cfg.data.num_instances) == (10, 4)
    assert (cfg.data.height, cfg.data.width, cfg.model.dim) == (256, 128, 256)
    assert (cfg.model.backbone, cfg.model.pretrained) == ("densenet121", "imagenet")


def test_synthped_config_needs_no_download() -> None:
    cfg = load_config(CONFIGS / "synthped.yaml")
    assert cfg.model.pretrained is None
    assert cfg.schedule.freeze_backbone_epochs == 0


def test_dict_round_trip_is_plain_and_exact() -> None:
    cfg = load_config(
        None, ["model.pretrained=null", "optim.lr=0.003", "schedule.iters_per_epoch=9"]
    )
    as_dict = config_to_dict(cfg)
    assert json.loads(json.dumps(as_dict)) == as_dict  # plain containers only
    assert as_dict["optim"]["lr"] == 0.003 and as_dict["model"]["pretrained"] is None
    assert config_from_dict(as_dict) == cfg


def test_config_from_dict_validates() -> None:
    as_dict = config_to_dict(DuATMConfig())
    as_dict["model"]["mode"] = "cosine"
    with pytest.raises(ConfigError, match=r"model\.mode"):
        config_from_dict(as_dict)
    with pytest.raises(ConfigError, match="unknown key 'extra'"):
        config_from_dict({"extra": 1})


def test_save_config_round_trips_through_load_config(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "synthped.yaml", ["optim.lr=0.02", "eval.flip=true"])
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, out)
    assert load_config(out) == cfg
    assert sorted(p.name for p in out.parent.iterdir()) == ["config.yaml"]  # no temp files left
