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


# --- errors: one line for what the user or the machine got wrong, tracebacks for bugs --------------------------
import errno
import json

import pytest

from smaug.common.errors import UserError

SUMMARY = {"model": "m", "suite": "leaderboard_v1", "average": 0.5,
           "tasks": {"arc": {"metric": "acc_norm", "value": 0.5,
                             "dataset": {"name": "ARC", "type": "ai2_arc", "config": None, "split": "test"}}}}


def _summary_file(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(SUMMARY))
    return path


def test_an_output_path_that_is_a_folder_is_one_line_naming_it(tmp_path, capsys):
    folder = tmp_path / "table.md"
    folder.mkdir()
    assert smaug.cli.main(["eval", "compare", str(_summary_file(tmp_path)), "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    # refused by check_outputs before any work (main's own OSError mapping is tested below)
    assert err.startswith(f"error: --out {folder} is a folder")


def test_a_full_disk_names_the_file_being_written(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # what write() raises: no file name

    summary = _summary_file(tmp_path)
    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "table.md"
    assert smaug.cli.main(["eval", "compare", str(summary), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: no space left on the device") and err.count("\n") == 1
    assert not list(tmp_path.glob(".table.md.*"))  # the temp file is gone


def _main_running(monkeypatch, func) -> int:
    """`smaug eval suites` through main(), with ``func`` in place of the command."""
    parser = smaug.cli.build_parser()
    args = parser.parse_args(["eval", "suites"])
    monkeypatch.setattr(smaug.cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: type(args)(**{**vars(args), "func": func}))
    return smaug.cli.main(["eval", "suites"])


def _raise(error):
    def run(args):
        raise error
    return run


@pytest.mark.parametrize("raised, message", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/out.json"), "error: /data/out.json: permission denied"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/data/file/x"), "error: /data/file/x: part of the path is a file"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "error: disk quota exceeded"),
])
def test_environment_errors_are_one_line(monkeypatch, capsys, raised, message):
    assert _main_running(monkeypatch, _raise(raised)) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and "SMAUG_DEBUG=1" in err and err.count("\n") == 1


@pytest.mark.parametrize("raised", [KeyError("bug"), TypeError("bug"), OSError(errno.EINVAL, "Invalid argument")])
def test_bugs_keep_their_traceback_and_smaug_debug_shows_every_one(monkeypatch, raised):
    with pytest.raises(type(raised)):
        _main_running(monkeypatch, _raise(raised))
    assert _main_running(monkeypatch, _raise(UserError("bad input"))) == 2
    monkeypatch.setenv("SMAUG_DEBUG", "1")
    with pytest.raises(UserError):
        _main_running(monkeypatch, _raise(UserError("bad input")))
