"""The `redline` command: help, bad arguments, the `inspect eval` wrapper (argument building,
report and exit codes, and one real Inspect run), `view` and `cleanup`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from redline import cli
from redline.analysis.synthetic import SampleSpec, write_log

REDLINE = Path(sys.executable).parent / "redline"
DATA = Path(__file__).parent / "data"


def _run(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INSPECT_DISPLAY": "plain", "NO_COLOR": "1"}
    return subprocess.run(
        [str(REDLINE), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


@pytest.mark.timeout(60)
def test_console_script_help_and_missing_logdir() -> None:
    top = _run("--help")
    assert top.returncode == 0
    for command in ("eval", "report", "view", "cleanup", "grid", "selfcheck"):
        assert command in top.stdout
    missing = _run("report", "/nonexistent/logs")
    assert missing.returncode == 2
    assert "LOGDIR does not exist: /nonexistent/logs" in missing.stderr
    assert "Traceback" not in missing.stderr + missing.stdout


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (
            "eval",
            ["--model", "--log-dir", "inspect eval --help", "redline/smollm2", "-T mode=full", "--epochs 3"],
        ),
        ("report", ["LOGDIR", "--out", "--format", "--compare A B", "MODEL@SCENARIO", "--json",
                    "Exit codes"]),
        ("grid", ["usage: redline grid", "GRID.yaml", "--ray ADDRESS", "--check", "Exit codes"]),
        ("selfcheck", ["usage: redline selfcheck", "--fast", "--against-local", "Exit codes"]),
        ("view", ["inspect view", "LOGDIR"]),
        ("cleanup", ["--state-root", "REDLINE_STATE_ROOT", "/run/redline",
                     "inspect sandbox cleanup redline"]),
    ],
)
def test_subcommand_help(command: str, words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for w in words:
        assert w in text, w


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for argv in ([], ["frobnicate"], ["report"], ["report", str(tmp_path), "--format", "pdf"]):
        assert cli.main(argv) == 2, argv
    assert "unknown format(s) pdf" in capsys.readouterr().err


def test_eval_refuses_bad_task_parameters_before_inspect_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(cli, "_inspect", lambda *a: calls.append(a) or 0)
    assert cli.main(["eval", "-T", "mode=ful", "--task-arg", "frobnicate=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err  # one line, the whole story
    assert "-T mode='ful': Input should be 'gateway' or 'full'" in err
    assert "unknown parameter(s) frobnicate; valid: mode, scaffold, epochs" in err
    assert "instruction" in err  # the scenario's own parameters are valid names too
    assert cli.main(["eval", "redline/chain_replication", "--model", "x/y", "-Tdepth=3", "-T",
                     "max_systems=3"]) == 2
    assert "max_systems=3 leaves no room for depth=3" in capsys.readouterr().err
    assert calls == []
    # Tasks that are not redline's are Inspect's business.
    assert cli.check_task_args(["eval", "tiny_task.py", "-T", "whatever=1"]) is None


@pytest.mark.timeout(120)
def test_inspect_eval_rejects_bad_task_parameters_in_one_line(tmp_path: Path) -> None:
    """`inspect eval` itself (not only `redline eval`): a clear message, no traceback."""
    inspect = Path(sys.executable).parent / "inspect"
    r = subprocess.run([str(inspect), "eval", "redline/shutdown_avoidance", "--model", "redline/idle", "-T",
                        "grace_seconds=-1", "-T", "colour=red", "--log-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=110, env={**os.environ, "NO_COLOR": "1"})
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out[-3000:]
    assert "redline/shutdown_avoidance: -T grace_seconds=-1: Input should be greater than 0" in out
    assert "unknown parameter(s) colour; valid:" in out


def test_eval_arguments_defaults_and_passthrough(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INSPECT_LOG_DIR", raising=False)
    args, log_dir = cli.eval_command([])
    assert args[:2] == ["eval", "redline/self_replication"]
    assert args[2:] == [
        "--model",
        "redline/smollm2",
        "-T",
        "mode=full",
        "-T",
        "max_steps=8",
        "-T",
        "temperature=0.7",
        "--epochs",
        "3",
        "--max-samples",
        "1",
        "--log-dir",
        str(log_dir),
    ]
    assert log_dir.parent == Path("logs") and log_dir.name.endswith("Z")

    args, log_dir = cli.eval_command(
        [
            "redline/chain_replication",
            "--model",
            "openai/gpt-4o",
            "--epochs",
            "10",
            "--max-samples",
            "2",
            "-T",
            "scaffold=react",
            "--log-dir",
            "out/x",
        ]
    )
    assert args == [
        "eval",
        "redline/chain_replication",
        "--epochs",
        "10",
        "--max-samples",
        "2",
        "-T",
        "scaffold=react",
        "--model",
        "openai/gpt-4o",
        "--log-dir",
        "out/x",
    ]
    assert log_dir == Path("out/x")

    # without --model the defaults fill only what the user left out
    args, _ = cli.eval_command(["--epochs", "5", "-T", "mode=gateway", "--model-args", "x=1"])
    assert args.count("--epochs") == 1 and "mode=full" not in args and "--model-args" in args
    assert "max_steps=8" in args
    assert args[args.index("--model") + 1] == "redline/smollm2"
    args, _ = cli.eval_command(["--model=ollama/qwen2.5:72b"])
    assert args == [
        "eval",
        "redline/self_replication",
        "--model",
        "ollama/qwen2.5:72b",
        "--log-dir",
        args[-1],
    ]


def _fake_inspect(rc: int, write: bool) -> object:
    calls: list[tuple[str, ...]] = []

    def fake(*args: str) -> int:
        calls.append(args)
        if write:
            log_dir = Path(args[args.index("--log-dir") + 1])
            S = SampleSpec
            write_log(
                log_dir / "run.eval",
                "ollama/qwen2.5:72b",
                "self_replication",
                [S("success"), S("success"), S("failure"), S("error")],
            )
        return rc

    fake.calls = calls  # type: ignore[attr-defined]
    return fake


@pytest.mark.parametrize(
    ("rc", "write", "expected_rc"), [(0, True, 0), (1, True, 1), (2, False, 2), (0, False, 1)]
)
def test_eval_writes_report_and_keeps_inspect_exit_code(
    rc: int,
    write: bool,
    expected_rc: int,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = _fake_inspect(rc, write)
    monkeypatch.setattr(cli, "_inspect", fake)
    assert cli.main(["eval", "--log-dir", str(tmp_path / "logs")]) == expected_rc
    out, err = capsys.readouterr()
    assert fake.calls[0][:2] == ("eval", "redline/self_replication")  # type: ignore[attr-defined]
    if write:
        assert "| ollama/qwen2.5:72b | self_replication | 2/3 | 66.7% |" in out
        assert f"Report: {tmp_path / 'logs' / 'report' / 'report.html'}" in out
        assert (tmp_path / "logs" / "report" / "report.md").exists()
    else:
        assert "nothing to report" in err and not (tmp_path / "logs" / "report").exists()


@pytest.mark.timeout(120)
def test_eval_runs_inspect_for_real(tmp_path: Path) -> None:
    # Inspect wants task files relative to the working directory.
    run = _run(
        "eval",
        "tiny_task.py",
        "--model",
        "mockllm/model",
        "--epochs",
        "2",
        "--log-dir",
        str(tmp_path / "logs"),
        "--display",
        "plain",
        cwd=DATA,
        timeout=110,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| mockllm/model | self_replication | 1/2 | 50.0% |" in run.stdout
    summary = json.loads((tmp_path / "logs" / "report" / "summary.json").read_text())
    (row,) = summary["success_table"]
    assert (row["successes"], row["trials"], row["median_steps"]) == (1, 2, 2)
    assert summary["commands"]["mockllm/model"]["explore files"] == 2


def test_view_passes_options_through(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(cli, "_inspect", lambda *a: calls.append(a) or 0)
    assert cli.main(["view"]) == 0
    assert cli.main(["view", "mylogs", "--port", "7576"]) == 0
    assert calls == [("view", "--log-dir", "logs"), ("view", "--log-dir", "mylogs", "--port", "7576")]


def test_eval_exits_nonzero_when_every_sample_errored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def fake(*args: str) -> int:
        log_dir = Path(args[args.index("--log-dir") + 1])
        write_log(log_dir / "run.eval", "ollama/qwen2.5:72b", "self_replication",
                  [SampleSpec("error"), SampleSpec("error")])
        return 0

    monkeypatch.setattr(cli, "_inspect", fake)
    assert cli.main(["eval", "--log-dir", str(tmp_path / "logs")]) == 1
    err = capsys.readouterr().err
    assert "every sample errored (2)" in err
    assert err.count("self_replication sample") == 2


def test_cleanup_sweeps_dead_sandboxes_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from redline.sandbox import procs

    dead = tmp_path / "sandboxes" / "deadbeef0001"
    live = tmp_path / "sandboxes" / "cafe00000002"
    for d in (dead, live):
        d.mkdir(parents=True)
    (dead / "owner").write_text("999999999 1")
    stat = procs.read_stat(os.getpid())
    assert stat is not None
    (live / "owner").write_text(f"{os.getpid()} {stat[1]}")
    assert cli.main(["cleanup", "--state-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Removed 1 sandbox(es) left by dead runs: deadbeef0001; 1 live sandbox(es) left alone." in out
    assert not dead.exists() and live.exists()


def test_report_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`redline report LOGDIR --compare A B` is `redline.report.compare_main`, exit codes included."""
    logs = tmp_path / "logs"
    write_log(logs / "a.eval", "ollama/qwen2.5:72b", "self_replication",
              [SampleSpec("success")] * 9 + [SampleSpec("failure")])
    write_log(logs / "b.eval", "openai/gpt-4o", "self_replication",
              [SampleSpec("success")] * 3 + [SampleSpec("failure")] * 7, seed=1)
    rows = tmp_path / "rows.json"
    assert cli.main(["report", str(logs), "--compare", "ollama/qwen2.5:72b", "openai/gpt-4o",
                     "--json", str(rows)]) == 0
    out = capsys.readouterr().out
    assert "Comparing A = ollama/qwen2.5:72b with B = openai/gpt-4o" in out
    assert "| self_replication | 9/10 (90.0%) | 3/10 (30.0%) | +60.0 pts |" in out
    (row,) = json.loads(rows.read_text())
    assert (row["a_successes"], row["b_successes"]) == (9, 3)
    assert not (logs / "report").exists()  # a comparison, not a report
    # 1: no trials on a side; 2: a bad selector or LOGDIR
    write_log(logs / "c.eval", "redline/idle", "shutdown_avoidance", [SampleSpec("failure")], seed=2)
    assert cli.main(["report", str(logs), "--compare", "redline/idle", "openai/gpt-4o"]) == 1
    assert cli.main(["report", str(logs), "--compare", "nosuch", "openai/gpt-4o"]) == 2
    assert "no model or scenario" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path / "missing"), "--compare", "a", "b"]) == 2
    assert cli.main(["report", str(logs), "--compare", "only-one"]) == 2  # --compare takes two
    assert cli.main(["report", str(logs), "--json", str(rows)]) == 2
    assert "--json goes with --compare" in capsys.readouterr().err


def test_grid_and_selfcheck_pass_their_arguments_through(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`redline grid` is `redline.grid.main(argv)` and `redline selfcheck` is
    `redline.selfcheck.main(argv)`: arguments unchanged (options that look like click's too),
    and their exit codes."""
    import redline.grid
    import redline.selfcheck

    seen: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(redline.grid, "main", lambda argv: seen.append(("grid", argv)) or 1)
    monkeypatch.setattr(redline.selfcheck, "main", lambda argv: seen.append(("selfcheck", argv)) or 0)
    assert cli.main(["grid", "g.yaml", "--ray", "10.0.0.1:6379", "-h", "--log-dir", "x"]) == 1
    assert cli.main(["selfcheck", "--fast", "--case", "net-only-lo", "--json"]) == 0
    assert seen == [("grid", ["g.yaml", "--ray", "10.0.0.1:6379", "-h", "--log-dir", "x"]),
                    ("selfcheck", ["--fast", "--case", "net-only-lo", "--json"])]
    monkeypatch.undo()
    # The real ones: a bad GRID.yaml and an unknown case are their exit code 2, their messages.
    bad = tmp_path / "grid.yaml"
    bad.write_text("models: [redline/idle]\nscenarios: [self_replicaton]\n")
    assert cli.main(["grid", str(bad), "--check"]) == 2
    assert "unknown scenario 'self_replicaton'" in capsys.readouterr().err
    assert cli.main(["grid"]) == 2  # GRID.yaml missing: argparse's usage error
    assert cli.main(["selfcheck", "--case", "no-such-case"]) == 2
    assert "unknown case(s): no-such-case" in capsys.readouterr().err
    assert cli.main(["selfcheck", "--list"]) == 0
    assert "net-only-lo" in capsys.readouterr().out
