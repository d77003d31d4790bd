"""The multi-task vs separate-models verdict: plain ASCII (the CLI prints it), no "+-", and delta-m
said once (the GUI and the CLI put it in front of the verdict)."""

from tlstudio.core.tasks.multitask.baseline import compare


def _check(verdict: str) -> None:
    assert verdict.isascii()
    assert "+-" not in verdict
    assert "delta-m" not in verdict and "%" not in verdict  # the callers say delta-m once


def test_matching_verdict_names_each_tasks_noise_once_without_plus_minus():
    r = compare({"object": 1.0, "colour": 1.0, "noise": 0.75}, {"object": 1.0, "colour": 1.0, "noise": 0.667},
                n_val={"object": 12, "colour": 10, "noise": 12}, heads_only=True)
    v = r["verdict"]
    _check(v)
    assert v.startswith("Multi-task matches the separate models")
    assert "8.3 for object" in v and "10.0 for colour" in v and "18.6 for noise" in v
    assert r["delta_m"] > 4  # still returned for the callers


def test_negative_and_helps_verdicts_do_not_repeat_delta_m():
    neg = compare({"a": 0.80, "b": 0.95}, {"a": 0.90, "b": 0.80}, n_val={"a": 400, "b": 400})
    _check(neg["verdict"])
    assert neg["verdict"].startswith("Negative transfer between tasks: a did worse")
    helps = compare({"a": 0.95, "b": 0.95}, {"a": 0.80, "b": 0.94}, n_val={"a": 400, "b": 400})
    _check(helps["verdict"])
    assert helps["verdict"].startswith("Multi-task learning helps: a did better")
