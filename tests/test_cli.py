"""The CLI tree mirrors the package: one group per flow."""

import errno
import json

import pytest

import smaug.cli
from smaug.cli import build_parser
from smaug.common.errors import UserError


def test_top_level_groups_are_the_flows():
    assert "{data,recipes,chain,eval,release,showcase}" in build_parser().format_help()
    assert smaug.cli.FLOWS == ["data", "training", "evaluation", "release", "showcase"]  # training: recipes, chain


# --- errors: one line for what the user or the machine got wrong, tracebacks for bugs --------------------------

SUMMARY = {
    "model": "m",
    "suite": "leaderboard_v1",
    "average": 0.5,
    "tasks": {
        "arc": {
            "metric": "acc_norm",
            "value": 0.5,
            "dataset": {"name": "ARC", "type": "ai2_arc", "config": None, "split": "test"},
        }
    },
}


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


@pytest.mark.parametrize(
    "raised, message",
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "/data/out.json"),
            "error: /data/out.json: permission denied",
        ),
        (
            NotADirectoryError(errno.ENOTDIR, "Not a directory", "/data/file/x"),
            "error: /data/file/x: part of the path is a file",
        ),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "error: disk quota exceeded"),
    ],
)
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
