"""cli.py simulate: every shipped example's scenarios run green with that example's configuration,
as an integrator runs them, and a scenario whose expectation fails exits non-zero saying what
happened instead. Scenario files are found by globbing config/examples/*/scenarios/*.yaml, so an
example added later is covered without a change here."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import ROOT

SCENARIOS = sorted((ROOT / "config" / "examples").glob("*/scenarios/*.yaml"))


def run(config: Path, scenario: Path):
    from cli import cli
    return CliRunner().invoke(cli, ["--config", str(config), "simulate", str(scenario)], catch_exceptions=False)


def test_every_example_with_timed_rules_ships_scenarios():
    examples = {p.parent.parent.name for p in SCENARIOS}
    assert {"smm-agency", "marketing-agency"} <= examples
    assert len(SCENARIOS) >= 9


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_shipped_scenario_holds(scenario: Path):
    if not (scenario.parent.parent / "connections.yaml").exists():
        pytest.skip(f"{scenario.parent.parent.name}: its scenarios are shipped ahead of the example itself")
    result = run(scenario.parent.parent, scenario)
    assert result.exit_code == 0, result.output
    assert "ok: " in result.output and "expectations held" in result.output, result.output
    assert "FAILED" not in result.output and "job failed" not in result.output


def test_the_reminder_fires_when_the_clock_passes_it_and_not_before(tmp_path: Path):
    """The SMM brief reminder: set on Tuesday 11:00 for Thursday 11:00 (2 working days); a scenario
    that stops a minute early sees no reminder, and its expectation of one fails with exit 1."""
    example = ROOT / "config" / "examples" / "smm-agency"
    text = (example / "scenarios" / "brief-reminder.yaml").read_text(encoding="utf-8")
    early = text.replace("  - advance: 1 working day\n  - advance: 1 working day\n", "  - at: 2026-11-26 10:59\n")
    assert early != text
    path = tmp_path / "early.yaml"
    path.write_text(early, encoding="utf-8")
    result = run(example, path)
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "expect[3]" in result.output
    assert "found 0 (all send_message calls: 2026-11-24 11:00" in result.output
    assert "2026-11-26 11:00 Thu  'A7 brief reminder' (task:1041)" in result.output   # still pending


def test_output_lists_actions_timers_and_guards_in_time_order():
    example = ROOT / "config" / "examples" / "marketing-agency"
    result = run(example, example / "scenarios" / "brief-follow-ups.yaml")
    lines = [line for line in result.output.splitlines() if "C16" not in line]
    stamps = [line[:16] for line in lines if line[:4].isdigit()]
    assert stamps == sorted(stamps)
    text = "\n".join(lines)
    assert "timer set     'C2 ретаргетинг через 3 дня без брифа': fires 2026-12-10 11:00 Thu" in text
    assert "→ ads-audiences.post_webhook(path='/retargeting'" in text
    assert "dropped by its guard 'C2 автозвонки с 10-го дня': guard no longer holds: stage is 'Бриф получен'" in text


def test_no_secret_is_needed_and_none_leaks_into_the_environment():
    """The scenario runs in a clean environment (no token, no secret); stand-ins are named."""
    example = ROOT / "config" / "examples" / "smm-agency"
    env = {"PATH": "/usr/bin:/bin", "CRMBRIDGE_CONFIG": str(example)}
    proc = subprocess.run([sys.executable, "cli.py", "simulate", str(example / "scenarios" / "brief-reminder.yaml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stand-ins for" in proc.stdout and "PLANFIX_TOKEN" in proc.stdout


def test_a_scenario_mistake_is_reported_with_its_step(tmp_path: Path):
    example = ROOT / "config" / "examples" / "smm-agency"
    path = tmp_path / "bad.yaml"
    path.write_text("start: 2026-11-24 11:00\nsteps:\n  - advance: 2 workign days\n", encoding="utf-8")
    result = CliRunner().invoke(__import__("cli").cli, ["--config", str(example), "simulate", str(path)])
    assert result.exit_code == 2
    assert f"{path}: steps[1]: advance:" in result.output and "'2 workign days'" in result.output


def timed_rules(example: Path) -> set[str]:
    """The example's rules that wait: after/before/at/every, or a schedule (digests)."""
    from config.settings import Settings
    from runtime import load_configuration
    from simulate.scenario import stand_in_environment
    env, _ = stand_in_environment(example, {}, {})
    _, ruleset = load_configuration(Settings(config_dir=example, environ=env))
    return {r.name for r in ruleset.rules if r.delay is not None or r.trigger.schedule}


@pytest.mark.parametrize("example", sorted({p.parent.parent for p in SCENARIOS}), ids=lambda p: p.name)
def test_every_timed_rule_of_an_example_is_tried_by_its_scenarios(example: Path):
    """One scenario per timed behaviour: each rule that waits sets its timer in some scenario."""
    if not (example / "connections.yaml").exists():
        pytest.skip(f"{example.name}: its scenarios are shipped ahead of the example itself")
    from config.settings import Settings
    from simulate.runner import simulate
    tried: set[str] = set()
    for scenario in sorted((example / "scenarios").glob("*.yaml")):
        outcome = simulate(scenario, Settings(config_dir=example, environ={}), out=lambda line: None)
        tried |= {t["rule"] for t in outcome.timers if t["what"] in ("set", "fired")}
    assert timed_rules(example) - tried == set()


def test_time_only_goes_forward(tmp_path: Path):
    example = ROOT / "config" / "examples" / "smm-agency"
    path = tmp_path / "back.yaml"
    path.write_text("start: 2026-11-24 11:00\nsteps:\n  - advance: 2h\n  - at: 2026-11-24 12:00\n", encoding="utf-8")
    result = CliRunner().invoke(__import__("cli").cli, ["--config", str(example), "simulate", str(path)])
    assert result.exit_code == 2
    assert "steps[2]: at: 2026-11-24 12:00 Tue is before the simulated now (2026-11-24 13:00 Tue)" in result.output
