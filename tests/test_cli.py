"""The CLI tree mirrors the package (one group per flow) and the spellings of earlier versions still work."""

import smaug.cli
from smaug.cli import ALIASES, FLOWS, build_parser


def test_top_level_groups_are_the_flows_and_aliases_are_hidden():
    parser = build_parser()
    help_text = parser.format_help()
    assert "{data,recipes,chain,eval,release,showcase}" in help_text
    assert len(FLOWS) == 5  # training owns two groups: recipes and chain
    for alias in ALIASES:
        assert f"\n    {alias} " not in help_text


def test_every_old_spelling_runs_the_same_command_as_the_new_one():
    parser = build_parser()
    flow_group = {"release": "release", "evaluation": "eval", "showcase": "showcase"}
    for alias, (flow, command) in ALIASES.items():
        extra = {"card": ["m"], "publish": ["m", "--repo", "a/b"], "mtbench": ["--model", "m", "--judge-url", "u",
                 "--judge-model", "j"], "contamination": ["--model", "m", "--ref", "r"], "tiny-model": ["o"],
                 "demo-model": ["o"]}.get(alias, [])
        old = parser.parse_args([alias, *extra])
        new = parser.parse_args([flow_group[flow], command, *extra])
        assert old.func is new.func, alias
        assert {k: v for k, v in vars(old).items() if k not in ("command", f"{flow_group[flow]}_command")} == \
               {k: v for k, v in vars(new).items() if k not in ("command", f"{flow_group[flow]}_command", "eval_command",
                                                                "release_command", "showcase_command")}, alias


def test_cli_module_names_the_flows_it_imports():
    assert smaug.cli.FLOWS == ["data", "training", "evaluation", "release", "showcase"]
