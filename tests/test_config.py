"""reasoning.config: params read as users mean them (YAML 1.2 numbers, as DVC writes them) and every
value checked against its dataclass field at load, with errors naming the file and the key path."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest
import yaml

from reasoning.config import from_dict, load_params, load_section
from reasoning.evaluate import EvalConfig
from reasoning.scaling import ScalingConfig
from stages.final_eval import FinalEvalConfig
from stages.grpo import GRPOStageConfig

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def evaluate_section(tmp_path: Path, **changes) -> Path:
    """params.yaml with an `evaluate` section: the toy world's, with `changes` (YAML text per key) applied."""
    base = {"batch_size": "64", "prompt": "{template: base, cot_suffix: ''}",
            "sampling": "{max_new_tokens: 160, temperature: 0.0}", "limit": "null", "compile": "false"}
    base.update(changes)
    return write(tmp_path, "evaluate:\n" + "".join(f"  {k}: {v}\n" for k, v in base.items()))


def load_error(path: Path, cls=EvalConfig, section="evaluate") -> str:
    with pytest.raises(ValueError) as e:
        load_section(cls, section, path)
    return str(e.value)


# --- YAML 1.2 numbers


def test_exponent_numbers_are_floats_as_in_yaml_1_2(tmp_path):
    forms = {"a": "1e-5", "b": "1e-05", "c": "5E-6", "d": ".5", "e": "+1e3", "f": "1.0e-5", "g": "5.0e-5",
             "h": "-2e2", "i": "3", "j": "'1e5'", "k": '"1e-5"'}
    params = load_params(write(tmp_path, "".join(f"{k}: {v}\n" for k, v in forms.items())))
    assert params == {"a": 1e-5, "b": 1e-5, "c": 5e-6, "d": 0.5, "e": 1000.0, "f": 1e-5, "g": 5e-5, "h": -200.0,
                      "i": 3, "j": "1e5", "k": "1e-5"}
    assert all(type(params[k]) is float for k in "abcdefgh")
    assert type(params["i"]) is int  # ints stay ints; quoted text stays text


def test_grpo_learning_rate_in_exponent_form_loads(tmp_path):
    """`learning_rate: 1e-05` (what `dvc exp run -S grpo.train.learning_rate=1e-5` writes) was a string
    and the stage died with "'<=' not supported between instances of 'str' and 'int'"."""
    text = (ROOT / "params.yaml").read_text()
    new, n = re.subn(r"learning_rate: \S+", "learning_rate: 1e-05", text)
    assert n == 1
    cfg = load_section(GRPOStageConfig, "grpo", write(tmp_path, new))
    assert cfg.train.learning_rate == 1e-5 and type(cfg.train.learning_rate) is float


@pytest.mark.parametrize("params_file", ["params.yaml", "params/real.yaml"])
def test_dvc_set_param_exponent_is_read_as_written(tmp_path, params_file):
    """The exact text DVC writes for `-S grpo.train.learning_rate=1e-5` (its own writer, dvc.utils.hydra)."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / params_file, path)
    apply_overrides(path, ["grpo.train.learning_rate=1e-5", "grpo.train.min_lr_ratio=5e-1"])
    assert re.search(r"learning_rate: 1e-05\b", path.read_text())
    train = load_section(GRPOStageConfig, "grpo", path).train
    assert (train.learning_rate, train.min_lr_ratio) == (1e-5, 0.5)


# --- values checked against their fields' types


def test_strings_for_numbers_name_the_key(tmp_path):
    msg = load_error(evaluate_section(tmp_path, batch_size='"64"'))
    assert msg.startswith(f"{tmp_path / 'params.yaml'}:evaluate.batch_size: expected an integer, got the string '64'")
    msg = load_error(evaluate_section(tmp_path, sampling='{max_new_tokens: 160, temperature: "0.7"}'))
    assert "params.yaml:evaluate.sampling.temperature: expected a number, got the string '0.7'" in msg


def test_a_float_is_not_an_int(tmp_path):
    msg = load_error(evaluate_section(tmp_path, sampling="{max_new_tokens: 160.5}"))
    assert msg == f"{tmp_path / 'params.yaml'}:evaluate.sampling.max_new_tokens: expected an integer, got 160.5"
    assert "expected an integer, got 160.0" in load_error(evaluate_section(tmp_path, sampling="{max_new_tokens: 160.0}"))
    assert "batch_size: expected an integer, got True" in load_error(evaluate_section(tmp_path, batch_size="true"))


def test_an_int_is_read_as_a_float(tmp_path):
    cfg = load_section(EvalConfig, "evaluate", evaluate_section(tmp_path, sampling="{temperature: 1, top_p: 1}"))
    assert type(cfg.sampling.temperature) is float and cfg.sampling.temperature == 1.0
    assert cfg.hash == load_section(EvalConfig, "evaluate", evaluate_section(
        tmp_path, sampling="{temperature: 1.0, top_p: 1.0}")).hash  # 1 and 1.0: the same setting


def test_bools_are_bools(tmp_path):
    assert "evaluate.compile: expected true or false, got the string 'false'" in load_error(
        evaluate_section(tmp_path, compile='"false"'))
    assert "evaluate.compile: expected true or false, got 1" in load_error(evaluate_section(tmp_path, compile="1"))


def test_a_string_where_a_mapping_belongs(tmp_path):
    msg = load_error(evaluate_section(tmp_path, prompt="base"))
    assert msg.endswith("params.yaml:evaluate.prompt: expected a mapping of PromptConfig's keys, got the string 'base'")
    assert "evaluate.sampling: expected a mapping" in load_error(evaluate_section(tmp_path, sampling="null"))
    assert "evaluate: expected a mapping of EvalConfig's keys, got 5" in load_error(write(tmp_path, "evaluate: 5\n"))


def test_a_choice_outside_its_literal(tmp_path):
    msg = load_error(evaluate_section(tmp_path, prompt="{template: chatml}"))
    assert msg.endswith("params.yaml:evaluate.prompt.template: expected one of 'base', 'chat', got the string 'chatml'")


def test_nested_key_paths_in_messages(tmp_path):
    scaling = write(tmp_path, "inference_scaling:\n  methods:\n    - {name: a}\n"
                              "    - {name: b, sampling: {top_p: high}}\n")
    assert load_error(scaling, ScalingConfig, "inference_scaling").endswith(
        "params.yaml:inference_scaling.methods[1].sampling.top_p: expected a number, got the string 'high'")
    grpo = write(tmp_path, "grpo:\n  train:\n    reward_funcs: [correct, 1]\n")
    assert load_error(grpo, GRPOStageConfig, "grpo").endswith(
        "params.yaml:grpo.train.reward_funcs[1]: expected a string, got 1")
    final = write(tmp_path, "final_eval:\n  models: {base: data/models/base, sft: 3}\n")
    assert load_error(final, FinalEvalConfig, "final_eval").endswith(
        "params.yaml:final_eval.models.sft: expected a string, got 3")
    sft = write(tmp_path, "distill_sft:\n  train: {betas: [0.9]}\n")
    from reasoning.distill import SFTConfig
    assert "distill_sft.train.betas: expected a list of 2 (a number, a number)" in load_error(sft, SFTConfig, "distill_sft")


def test_optional_accepts_null_or_its_type(tmp_path):
    assert load_section(EvalConfig, "evaluate", evaluate_section(tmp_path, limit="null")).limit is None
    assert load_section(EvalConfig, "evaluate", evaluate_section(tmp_path, limit="5")).limit == 5
    assert "evaluate.limit: expected an integer or null, got the string '5'" in load_error(
        evaluate_section(tmp_path, limit="'5'"))
    grpo = from_dict(GRPOStageConfig, yaml.safe_load("train: {epsilon_high: null}"))
    assert grpo.train.epsilon_high is None
    assert from_dict(GRPOStageConfig, {"train": {"epsilon_high": 10}}).train.epsilon_high == 10.0
    assert from_dict(FinalEvalConfig, {"scaling": None}).scaling is None


def test_lists_become_tuples_and_dataclass_elements_are_built():
    cfg = from_dict(ScalingConfig, {"methods": [{"name": "a", "budgets": [1]}]}, "params.yaml:inference_scaling")
    assert cfg.methods[0].name == "a" and cfg.methods[0].budgets == (1,)
    with pytest.raises(ValueError, match=r"params.yaml:inference_scaling.methods\[0\]: unknown key"):
        from_dict(ScalingConfig, {"methods": [{"name": "a", "temprature": 1}]}, "params.yaml:inference_scaling")
    with pytest.raises(ValueError, match=r"inference_scaling.methods\[0\]: expected a mapping of MethodConfig"):
        from_dict(ScalingConfig, {"methods": ["a"]}, "params.yaml:inference_scaling")
    with pytest.raises(ValueError, match=r"inference_scaling.methods: expected a list, got the string"):
        from_dict(ScalingConfig, {"methods": "a"}, "params.yaml:inference_scaling")


def test_a_nested_override_keeps_the_defaults_it_does_not_name():
    """`dvc exp run -S load_base.toy.train.seed=1` writes `toy: {train: {seed: 1}}`: only the seed may
    change. Reproduction: the toy base's training (lr 3e-3, 3,500 steps, ToyBaseConfig's own default)
    fell back to TrainConfig's class defaults (lr 1e-3, max_steps 0) the moment one key was given."""
    from reasoning.toy.pretrain import ToyBaseConfig
    from stages.load_base import LoadBaseConfig

    default = ToyBaseConfig().train
    cfg = from_dict(LoadBaseConfig, {"toy": {"seed": 1, "train": {"seed": 1}}})
    assert cfg.toy.train == dataclasses.replace(default, seed=1) and cfg.toy.seed == 1
    assert cfg.toy.hidden_size == ToyBaseConfig().hidden_size
    with pytest.raises(ValueError, match=r"LoadBaseConfig\.toy\.train: unknown key\(s\) \['sed'\]"):
        from_dict(LoadBaseConfig, {"toy": {"train": {"sed": 1}}})
    with pytest.raises(ValueError, match=r"toy\.train\.max_steps: expected an integer"):
        from_dict(LoadBaseConfig, {"toy": {"train": {"max_steps": "many"}}})


def test_every_seed_of_the_seed_bench_is_a_params_key():
    """bench.seeds sets each key of SEED_KEYS; a renamed key would fail here, not silently leave a seed fixed."""
    from bench.seeds import SEED_KEYS, seeded_params
    from reasoning.distill import SFTConfig, TracesConfig
    from stages.load_base import LoadBaseConfig

    params = seeded_params(load_params(ROOT / "params.yaml"), 7)
    cfgs = {"load_base": from_dict(LoadBaseConfig, params["load_base"]),
            "evaluate": from_dict(EvalConfig, params["evaluate"]),
            "inference_scaling": from_dict(ScalingConfig, params["inference_scaling"]),
            "teacher_traces": from_dict(TracesConfig, params["teacher_traces"]),
            "distill_sft": from_dict(SFTConfig, params["distill_sft"]),
            "grpo": from_dict(GRPOStageConfig, params["grpo"])}
    for key in SEED_KEYS:
        section, *path = key.split(".")
        value = cfgs[section]
        for part in path:
            value = getattr(value, part)
        assert value == 7, key
    assert params["prepare_data"]["toy"]["seed"] == load_params(ROOT / "params.yaml")["prepare_data"]["toy"]["seed"]
