"""`smaug release card|publish`: the licence-aware model card, and uploading a model with it."""

from __future__ import annotations

import argparse
from pathlib import Path


def _parser(sub, name: str, help: str, evals: str, func) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help)
    parser.add_argument("model_dir", type=Path, help="a trained model folder (holds smaug_provenance.json)")
    parser.add_argument(
        "--eval", dest="evals", action="append", type=Path, default=[], metavar="SUMMARY_JSON", help=evals
    )
    parser.set_defaults(func=func)
    return parser


def register(subparsers) -> None:
    sub = subparsers.add_parser("release", help="model cards and publishing to the Hub")
    sub = sub.add_subparsers(dest="release_command", required=True)
    evals = "a `smaug eval` summary.json for the card (repeatable); those in results/eval/ for the folder are found too"
    card = _parser(sub, "card", "write the licence-aware model card (README.md) into a model folder", evals, _card)
    card.add_argument("--no-auto-eval", action="store_true", help="only use the --eval files given")
    card.add_argument("--name", help="model name on the card (default: the folder name)")
    evals = "a summary.json for a card generated at upload (repeatable)"
    publish = _parser(
        sub, "publish", "upload a trained model and its card to the Hub (private by default)", evals, _publish
    )
    publish.add_argument("--repo", required=True, help="target Hub repo, org/name")
    publish.add_argument("--public", action="store_true", help="create/publish a public repo (default: private)")
    publish.add_argument("--dry-run", action="store_true", help="list what would be uploaded and where; upload nothing")
    publish.add_argument("--message", help="commit message")


def _card(args: argparse.Namespace) -> int:
    from smaug.release.cards import render_card, write_card

    card = render_card(args.model_dir, args.evals, model_name=args.name, auto_evals=not args.no_auto_eval)
    data = card.data.to_dict()
    licence = data["license"] + (f" ({data['license_name']})" if data.get("license_name") else "")
    results = len(card.data.eval_results or [])
    path = write_card(args.model_dir, card)
    print(f"wrote {path} (license: {licence}; base_model: {data.get('base_model', 'none')}; {results} eval result(s))")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from smaug.release.publish import publish

    options = dict(public=args.public, dry_run=args.dry_run, evals=args.evals, commit_message=args.message)
    publish(args.model_dir, args.repo, **options)
    return 0
