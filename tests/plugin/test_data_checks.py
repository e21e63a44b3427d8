"""rl: dpop checks every preference row with the dataset's own `type:` before any model is loaded."""

import json

import pytest
from axolotl.prompt_strategies.dpo import load as load_dpo
from axolotl.utils.dict import DictDefault

from axolotl_dpop.data_checks import PreferenceDataError, check_rows, raise_for_problems
from tests.axolotl_runner import run_axolotl_train, tiny_config, write_config, write_pairs

CFG = DictDefault({"datasets": [{"path": "x"}]})


def rows_for_intel():
    return [
        {"system": "", "question": "2+2?", "chosen": "4", "rejected": "5"},
        {"system": None, "question": "3+3?", "chosen": "6", "rejected": None},  # JSON row without rejected
        {"system": "be brief", "question": "4+4?", "chosen": "8", "rejected": "8"},  # identical
        {"question": "", "chosen": "1", "rejected": "2"},  # empty question
    ]


def test_missing_and_empty_fields_are_named_with_their_row():
    report = check_rows(rows_for_intel(), load_dpo("chatml.intel", CFG), "train.jsonl", "chatml.intel")
    assert report.rows == 4 and report.num_problems == 2 and report.identical == 1
    assert report.problems[0].startswith("row 1 lacks field 'rejected'")
    assert report.problems[1].startswith("row 3 lacks field 'question'")
    with pytest.raises(PreferenceDataError) as info:
        raise_for_problems([report])
    message = str(info.value)
    assert "train.jsonl: 2 of 4 rows" in message and "chatml.intel" in message


def test_message_list_types_report_malformed_rows():
    ultra = load_dpo("chatml.ultra", CFG)
    good = {
        "prompt": "hi",
        "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}],
        "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "b"}],
    }
    bad = {**good, "rejected": [{"role": "user", "content": "hi"}]}  # no assistant turn
    report = check_rows([good, bad], ultra, "uf", "chatml.ultra")
    assert report.num_problems == 1 and report.problems[0].startswith("row 1 has a malformed field")


def test_clean_rows_pass():
    report = check_rows(rows_for_intel()[:1], load_dpo("chatml.intel", CFG), "t", "chatml.intel")
    assert report.num_problems == 0
    raise_for_problems([report])


@pytest.mark.slow
def test_axolotl_train_stops_before_loading_a_model_on_a_row_without_rejected(tmp_path, tiny_model_dir):
    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    del rows[5]["rejected"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    proc = run_axolotl_train(tiny_config(tiny_model_dir, data, out), tmp_path / "run")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "row 5 lacks field 'rejected'" in log and str(data) in log
    assert "Loading weights" not in log  # failed before any model was loaded
    assert not (out / "model.safetensors").exists()


def test_rows_all_longer_than_sequence_len_stop_the_run_before_any_model_loads(tmp_path, tiny_model_dir):
    """TRL would stop with a bare StopIteration on the empty dataset, after loading the model. (Identical pairs
    are counted and dropped for every rl: tests/plugin/test_axolotl_e2e.py.)"""
    from axolotl.cli.config import load_cfg

    from axolotl_dpop.plugin import DPOPPlugin

    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    cfg = load_cfg(str(write_config(tiny_config(tiny_model_dir, data, tmp_path / "out", sequence_len=8), tmp_path)))
    with pytest.raises(PreferenceDataError, match=r"config\.yml: sequence_len: 8 drops all 8 train rows"):
        DPOPPlugin().load_datasets(cfg)


def test_only_the_columns_trl_reads_reach_it(tmp_path, tiny_model_dir):
    """TRL 1.9 judges a row conversational from one arbitrary key: a leftover message list (UltraFeedback's
    `messages`) next to string pairs would, under some hash seeds, tokenize them without the EOS."""
    from axolotl.cli.config import load_cfg
    from trl.data_utils import is_conversational

    from axolotl_dpop.plugin import DPOPPlugin

    data = write_pairs(tmp_path / "pairs.jsonl", n=4)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}]
    data.write_text("".join(json.dumps({**row, "messages": messages, "source": "x"}) + "\n" for row in rows))
    cfg = load_cfg(str(write_config(tiny_config(tiny_model_dir, data, tmp_path / "out"), tmp_path)))
    train = DPOPPlugin().load_datasets(cfg).train_dataset
    assert sorted(train.column_names) == ["chosen", "prompt", "rejected"]
    assert not is_conversational(train[0])
