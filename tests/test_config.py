from dataclasses import dataclass

import pytest

from retrikt.config import arg, parse_config
from retrikt.io import RetriktError


@dataclass
class Cfg:
    task: str = arg("cb", help="task")
    epochs: int = arg(3, help="epochs")
    lr: float = arg(1e-3, help="lr")
    seeds: list[int] = arg([1, 2, 3], help="seeds")
    store: str | None = arg(None, help="store")
    save: bool = arg(False, help="save")


def test_defaults_yaml_and_cli_precedence(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("task: rte\nepochs: 5\nseeds: [7]\n")
    cfg = parse_config(Cfg, ["--config", str(y), "--epochs", "9", "--save"])
    assert (cfg.task, cfg.epochs, cfg.seeds, cfg.save, cfg.lr) == ("rte", 9, [7], True, 1e-3)
    assert parse_config(Cfg, []).seeds == [1, 2, 3]
    assert parse_config(Cfg, ["--seeds", "4", "5", "--store", "s"]).seeds == [4, 5]


def test_smoke_overrides_sit_between_yaml_and_flags():
    cfg = parse_config(Cfg, ["--smoke", "--task", "copa"], smoke={"epochs": 1, "task": "sst2"})
    assert (cfg.epochs, cfg.task) == (1, "copa")


@pytest.mark.parametrize("text, match", [
    ("epochz: 3\n", "unknown option.*epochz"),
    ("epochs: three\n", "option epochs: expected int"),
    ("epochs: 2.5\n", "option epochs: expected int"),
    ("- a\n- b\n", "expected a mapping"),
    ("task: [unclosed\n", "not valid YAML"),
])
def test_bad_yaml_is_refused_naming_the_file_and_option(tmp_path, text, match):
    y = tmp_path / "bad.yaml"
    y.write_text(text)
    with pytest.raises(RetriktError, match=match) as e:
        parse_config(Cfg, ["--config", str(y)])
    assert "bad.yaml" in str(e.value)


def test_non_utf8_yaml_is_refused(tmp_path):
    y = tmp_path / "bin.yaml"
    y.write_bytes(b"task: \xff\xfe\n")
    with pytest.raises(RetriktError, match="bin.yaml"):
        parse_config(Cfg, ["--config", str(y)])


def test_help_text_with_a_percent_sign_prints(capsys):
    @dataclass
    class Pct:
        share: float = arg(0.5, help="kept share (69% in the paper)")
    with pytest.raises(SystemExit) as e:
        parse_config(Pct, ["--help"])
    assert e.value.code == 0 and "69% in the paper" in capsys.readouterr().out


@pytest.mark.parametrize("module", ["retrikt.build", "retrikt.train", "retrikt.compare", "retrikt.compose",
                                    "retrikt.port", "retrikt.eval"])
def test_every_entry_point_prints_help(module):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr[-500:]


@dataclass
class Recipe:
    preset: str = arg("base", help="preset")
    task: str = arg("cb", help="task")
    epochs: int = arg(3, help="epochs")
    seeds: list[int] = arg([1, 2, 3], help="seeds")


def test_preset_file_sits_under_the_yaml_and_the_flags(tmp_path):
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "base.yaml").write_text("")
    (presets / "big.yaml").write_text("preset: big\ntask: rte\nepochs: 30\nseeds: [1, 2, 3, 4]\n")
    y = tmp_path / "mine.yaml"
    y.write_text("preset: big\nepochs: 9\n")
    assert parse_config(Recipe, [], presets=presets) == Recipe()
    assert parse_config(Recipe, ["--preset", "big"], presets=presets) == Recipe("big", "rte", 30, [1, 2, 3, 4])
    cfg = parse_config(Recipe, ["--config", str(y)], presets=presets)
    assert (cfg.task, cfg.epochs, cfg.seeds) == ("rte", 9, [1, 2, 3, 4])            # preset < YAML
    cfg = parse_config(Recipe, ["--config", str(y), "--epochs", "2", "--seeds", "5"], presets=presets)
    assert (cfg.task, cfg.epochs, cfg.seeds) == ("rte", 2, [5])                      # YAML < flags
    (presets / "bad.yaml").write_text("preset: big\n")
    with pytest.raises(RetriktError, match="bad.yaml: says preset 'big'"):
        parse_config(Recipe, ["--preset", "bad"], presets=presets)
    (presets / "typo.yaml").write_text("epochz: 1\n")
    with pytest.raises(RetriktError, match="typo.yaml: unknown option.*epochz"):
        parse_config(Recipe, ["--preset", "typo"], presets=presets)


def test_a_recipe_with_a_non_text_option_name_is_refused_naming_the_file(tmp_path):
    # found by the recipe fuzz test: `~: 1` gave a TypeError from sorting None among the option names
    from retrikt.config import from_dict, load_yaml
    from retrikt.io import RetriktError
    from retrikt.pipeline.config import BuildConfig
    for text in ("~: 1\n", "1: x\ntask: sst2\n"):
        path = tmp_path / "recipe.yaml"
        path.write_text(text)
        with pytest.raises(RetriktError, match="recipe.yaml: option names must be text"):
            from_dict(BuildConfig, load_yaml(path), str(path))
