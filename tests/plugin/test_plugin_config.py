"""Config-time behaviour of DPOPPlugin: schema, defaults and clear errors, all before any model loads."""

import re
from pathlib import Path

import pytest
from axolotl.cli.config import prepare_plugins
from axolotl.utils.config import validate_config
from axolotl.utils.dict import DictDefault

from tests.axolotl_runner import tiny_config

REPO = Path(__file__).resolve().parents[2]
CPU = {
    "capabilities": {"bf16": False, "fp8": False, "n_gpu": 0, "n_node": 1, "compute_capability": None},
    "env_capabilities": {"torch_version": "2.13.0"},
}


def validated(tmp_path, **overrides):
    cfg = DictDefault(tiny_config(tmp_path / "model", tmp_path / "pairs.jsonl", tmp_path / "out", **overrides))
    cfg.axolotl_config_path = str(tmp_path / "my_recipe.yml")
    prepare_plugins(cfg)
    return validate_config(cfg, **CPU)


def test_rl_dpop_becomes_dpo_with_the_dpop_trainer(tmp_path):
    cfg = validated(tmp_path, dpop_lambda=5)
    assert cfg.rl == "dpo" and cfg.dpop is True and cfg.dpop_lambda == 5.0
    assert cfg.trainer_cls == "axolotl_dpop.trainer.DPOPTrainer"


def test_lambda_defaults_to_the_papers_50(tmp_path):
    assert validated(tmp_path, dpop_lambda=None).dpop_lambda == 50.0


@pytest.mark.parametrize("bad", [-1, -0.5, "fifty", True, float("nan"), [50]])
def test_bad_lambda_is_refused_naming_the_file_and_field(tmp_path, bad):
    with pytest.raises(ValueError, match=r"my_recipe\.yml: dpop_lambda: .*a number >= 0"):
        validated(tmp_path, dpop_lambda=bad)


def test_other_dpo_losses_are_refused_with_dpop(tmp_path):
    with pytest.raises(ValueError, match="remove dpo_loss_type"):
        validated(tmp_path, dpo_loss_type=["ipo"])
    with pytest.raises(ValueError, match=r"cannot be combined with \['dpo_label_smoothing'\]"):
        validated(tmp_path, dpo_label_smoothing=0.1)


def test_lambda_without_rl_dpop_is_refused(tmp_path):
    with pytest.raises(ValueError, match="dpop_lambda is an option of rl: dpop, not of rl: dpo"):
        validated(tmp_path, rl="dpo", dpop_lambda=50)


def test_rl_dpo_is_left_alone(tmp_path):
    cfg = validated(tmp_path, rl="dpo", dpop_lambda=None)
    assert cfg.rl == "dpo" and not cfg.dpop and not cfg.trainer_cls


SLIC = {"rl": "slic", "dpop_lambda": None}


def test_rl_slic_becomes_dpo_with_the_slic_trainer_and_default_lambda(tmp_path):
    from axolotl_dpop.args import DEFAULT_SLIC_LAMBDA

    cfg = validated(tmp_path, **SLIC)
    assert cfg.rl == "dpo" and cfg.slic is True and not cfg.dpop
    assert cfg.trainer_cls == "axolotl_dpop.trainer.SLiCTrainer"
    assert cfg.slic_lambda == DEFAULT_SLIC_LAMBDA == 0.1 and cfg.rl_beta == 0.3
    assert validated(tmp_path, **SLIC, slic_lambda=2).slic_lambda == 2.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"slic_lambda": -0.1}, r"slic_lambda: .*a number >= 0"),
        ({"slic_lambda": float("inf")}, r"slic_lambda: .*a number >= 0"),
        ({"slic_lambda": "0.1"}, r"slic_lambda: .*a number >= 0"),
        ({"rl_beta": None}, r"rl: slic needs rl_beta, the hinge margin"),
        ({"rl_beta": 0}, r"rl_beta must be a number > 0"),
        ({"rl_beta": -0.3}, r"rl_beta must be a number > 0"),
        ({"dpop_lambda": 50}, r"dpop_lambda is an option of rl: dpop, not of rl: slic"),
        (
            {"dpo_loss_type": ["hinge"]},
            r"defines its own loss; remove dpo_loss_type .*TRL's hinge: rl: dpo \+ dpo_loss_type: \[hinge\]",
        ),
        (
            {"precompute_ref_log_probs": True},
            r"cannot be combined with \['precompute_ref_log_probs'\] \(it has no reference",
        ),
        ({"dpo_label_smoothing": 0.1}, r"cannot be combined with \['dpo_label_smoothing'\]"),
        ({"trainer_cls": "my.Trainer"}, r"sets trainer_cls itself"),
    ],
)
def test_bad_slic_configs_are_refused_naming_the_file(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=r"my_recipe\.yml: (rl: slic )?" + message):
        validated(tmp_path, **{**SLIC, **overrides})


def test_each_lambda_belongs_to_its_rl(tmp_path):
    with pytest.raises(ValueError, match="slic_lambda is an option of rl: slic, not of rl: dpop"):
        validated(tmp_path, slic_lambda=0.1)
    with pytest.raises(ValueError, match="slic_lambda is an option of rl: slic, not of rl: dpo"):
        validated(tmp_path, rl="dpo", dpop_lambda=None, slic_lambda=0.1)


def test_rl_dpop_without_the_plugin_message_is_in_the_readme(tmp_path):
    """axolotl rejects the enum before any plugin code runs, so the README must show the message and fix."""
    cfg = DictDefault(tiny_config(tmp_path / "m", tmp_path / "d.jsonl", tmp_path / "o", plugins=None))
    with pytest.raises(Exception) as info:
        validate_config(cfg, **CPU)
    message_line = next(line.strip() for line in str(info.value).splitlines() if "input_value='dpop'" in line)
    readme = (REPO / "README.md").read_text()
    troubleshooting = readme[readme.index("## Troubleshooting") :]
    assert message_line in troubleshooting
    assert re.search(r"plugins:\s*\n\s*- axolotl_dpop\.DPOPPlugin", troubleshooting)


def test_chunked_logps_options_reach_the_trainer_arguments(tmp_path):
    from axolotl_dpop.plugin import DPOPPlugin

    cfg = validated(tmp_path, dpop_chunked_logps=True, dpop_logps_chunk_size=512, precompute_ref_log_probs=True)
    assert cfg.dpop_chunked_logps is True and cfg.dpop_logps_chunk_size == 512
    args = DPOPPlugin().get_training_args(cfg)
    assert args == {
        "dpop_lambda": 50.0,
        "dpop_chunked_logps": True,
        "dpop_logps_chunk_size": 512,
        "dpop_shared_prefix": False,
        "dpop_group_pairs": False,
        "dpop_ref_logps_cache_dir": str(tmp_path / "out-prepared" / "dpop_ref_logps"),
    }
    # without precompute there is nothing to cache; without the switch the default chunk size is carried
    plain = DPOPPlugin().get_training_args(validated(tmp_path))
    assert plain["dpop_chunked_logps"] is False and plain["dpop_ref_logps_cache_dir"] is None


@pytest.mark.parametrize("rl", ["dpop", "slic"])
def test_shared_prefix_options_reach_the_trainer_arguments_of_either_rl(tmp_path, rl):
    from axolotl_dpop.plugin import DPOPPlugin

    extra = {"rl": "slic", "dpop_lambda": None} if rl == "slic" else {}
    options = {"dpop_shared_prefix": True, "dpop_group_pairs": True, "dpop_logps_chunk_size": 64}
    cfg = validated(tmp_path, **extra, **options, attn_implementation="sdpa")
    assert DPOPPlugin().get_training_args(cfg).items() >= {**options, "dpop_chunked_logps": False}.items()


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"dpop_chunked_logps": True, "dpop_logps_chunk_size": 0}, r"dpop_logps_chunk_size: .*per chunk, >= 1"),
        ({"dpop_chunked_logps": True, "dpop_logps_chunk_size": "1k"}, r"dpop_logps_chunk_size: .*per chunk, >= 1"),
        ({"dpop_chunked_logps": True, "dpop_logps_chunk_size": True}, r"dpop_logps_chunk_size: .*per chunk, >= 1"),
        ({"dpop_logps_chunk_size": 256}, "dpop_logps_chunk_size only applies with dpop_chunked_logps: true"),
        ({"dpop_chunked_logps": "yes"}, "dpop_chunked_logps: Input should be a valid boolean"),
        ({"dpop_chunked_logps": True, "fsdp_config": {"fsdp_version": 2}}, "FSDP has resharded it"),
        ({"dpop_ref_logps_cache_dir": "cache"}, "only applies with precompute_ref_log_probs: true"),
        ({"dpop_shared_prefix": "yes"}, "dpop_shared_prefix: Input should be a valid boolean"),
        ({"dpop_group_pairs": True}, "dpop_group_pairs only applies with dpop_shared_prefix: true"),
        ({"dpop_shared_prefix": True, "dpop_chunked_logps": False}, "uses the chunked head; remove dpop_chunked_logps"),
        ({"dpop_shared_prefix": True, "fsdp_config": {"fsdp_version": 2}}, "set dpop_shared_prefix: false"),
        (
            {"dpop_shared_prefix": True, "attn_implementation": "flash_attention_2"},
            r"dpop_shared_prefix: attn_implementation: flash_attention_2 cannot take the tree attention mask.*; set "
            "attn_implementation: sdpa",
        ),
        (
            {"dpop_shared_prefix": True, "flash_attention": True},
            r"flash_attention: true \(attn_implementation: flash_attention_2\) cannot take .*; replace "
            "flash_attention: true with attn_implementation: sdpa",
        ),
        ({"rl": "dpo", "dpop_lambda": None, "dpop_shared_prefix": True}, r"is an option of rl: dpop, not of rl: dpo"),
        ({"precompute_ref_log_probs": True, "dpop_ref_logps_cache_dir": " "}, "dpop_ref_logps_cache_dir: String"),
        ({"rl": "dpo", "dpop_lambda": None, "dpop_chunked_logps": True}, r"is an option of rl: dpop, not of rl: dpo"),
        # beta <= 0 reverses any preference loss: refused for every rl that lists the plugin (the chain relies on it)
        ({"rl": "dpo", "dpop_lambda": None, "rl_beta": -0.3}, r"rl_beta must be a number > 0"),
        ({"rl": "ipo", "dpop_lambda": None, "rl_beta": float("nan")}, r"rl_beta must be a number > 0"),
    ],
)
def test_bad_options_are_refused_naming_the_file(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=r"my_recipe\.yml: .*" + message):
        validated(tmp_path, **overrides)
