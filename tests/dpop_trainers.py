"""DPOPTrainer built in-process on the tiny model (no axolotl CLI), for the chunked-head and cache tests."""

from __future__ import annotations

import dataclasses

import torch


def _training_args_cls():
    from axolotl.core.trainers.dpo.args import AxolotlDPOConfig

    from axolotl_dpop.args import DPOPTrainingArgs

    # axolotl merges DPOPTrainingArgs into its config class when the plugin is registered (another test in this
    # process may have done so already); otherwise do it by hand.
    if DPOPTrainingArgs in AxolotlDPOConfig.__mro__:
        return AxolotlDPOConfig

    @dataclasses.dataclass
    class Args(DPOPTrainingArgs, AxolotlDPOConfig):
        pass

    return Args


def make_trainer(
    tmp_path,
    model_dir,
    rows,
    *,
    chunked,
    shared=False,
    group_pairs=False,
    variant="full",
    precompute=False,
    cache_dir=None,
    chunk_size=8,
    tie=False,
    max_length=96,
    tokenizer=None,
    edit_model=None,
    lora_targets=("q_proj", "v_proj", "lm_head"),
):
    """A DPOPTrainer on ``rows``; ``variant`` "full" (separate reference model unless ``precompute``) or
    "lora" (LoRA on q/v/lm_head, reference = adapter disabled). After construction (and any precompute
    pass) the policy is moved off the reference so that the DPOP penalty is active. ``edit_model`` is
    applied to the loaded model before the trainer sees it."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_dpop.trainer import DPOPTrainer

    def load():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if tie:
            model.config.tie_word_embeddings = True
            model.lm_head.weight = model.model.embed_tokens.weight
        return model

    torch.manual_seed(0)  # LoRA's A matrices are drawn at random
    model = load()
    if edit_model is not None:
        edit_model(model)
    ref = None if variant == "lora" or precompute else load()
    peft_config = (
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=lora_targets) if variant == "lora" else None
    )
    args = _training_args_cls()(
        output_dir=str(tmp_path / f"out-{chunked}-{shared}"),
        per_device_train_batch_size=4,
        max_length=max_length,
        beta=0.3,
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        precompute_ref_log_probs=precompute,
        dpop_chunked_logps=chunked,
        dpop_shared_prefix=shared,
        dpop_group_pairs=group_pairs,
        dpop_logps_chunk_size=chunk_size,
        dpop_ref_logps_cache_dir=str(cache_dir) if cache_dir else None,
    )
    trainer = DPOPTrainer(
        model,
        ref,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer or AutoTokenizer.from_pretrained(model_dir),
        peft_config=peft_config,
    )
    # Move the policy away from the reference (after any precompute pass), so that the DPOP penalty is on.
    with torch.no_grad():
        for index, (name, p) in enumerate(trainer.model.named_parameters()):
            if variant != "lora" or "lora_B" in name:
                p.add_(0.02 * torch.sin(torch.arange(p.numel(), dtype=torch.float32) + index).view_as(p))
    trainer.model.train()
    return trainer
