"""Monitor callbacks: alert actions and webhook, completions log, periodic evaluation; the
stop and warn actions and the evaluation also inside a real GRPOTrainer on a tiny model."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from grpokit import GRPOConfig, GRPOTrainer
from grpokit.trainers.checkpoints import CheckpointError
from grpokit.config import EvalConfig, MonitorConfig
from grpokit.evaluation.evaluate import evaluate
from grpokit.models import build_char_tokenizer, create_tiny_model
from grpokit.monitoring.alerts import RULES
from grpokit.monitoring.callbacks import AlertMonitor, CompletionsLog, PeriodicEval, monitor_callbacks
from grpokit.monitoring.completions_log import completion_records, pick_rows
from grpokit.monitoring.webhook import send_alert
from grpokit.rewards import RewardBatch
from grpokit.sampling.sampler import Rollout, left_pad

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
ROWS = [{"prompt": f"say {i}:", "answer": str(i)} for i in range(20)]


def only(rule: str, **settings) -> MonitorConfig:
    """A monitor whose only active alert is ``rule`` (no cooldown unless given)."""
    alerts = {name: {"action": "off"} for name in RULES if name != rule}
    alerts[rule] = settings
    return MonitorConfig(alerts={"cooldown_steps": settings.pop("cooldown_steps", 0), **alerts})


class StubTrainer:
    """The part of a trainer the alert monitor uses, recording the actions it is asked for."""

    def __init__(self, output_dir):
        self.args = SimpleNamespace(output_dir=str(output_dir))
        self.stops, self.rollbacks = [], []

    def request_stop(self, reason):
        self.stops.append(reason)

    def rollback(self, lr_factor):
        self.rollbacks.append(lr_factor)
        return 4


NO_REWARDS = SimpleNamespace(rewards=None)


def run_steps(monitor, trainer, metric_rows, first=1):
    """Feed steps first, first + 1, ...; return each step's metrics after the monitor ran."""
    out = []
    for step, metrics in enumerate(metric_rows, start=first):
        metrics = dict(metrics)
        monitor.on_step_end(trainer, step, NO_REWARDS, metrics)
        out.append(metrics)
    return out


def alert_lines(output_dir):
    return [json.loads(line) for line in (output_dir / "alerts.jsonl").read_text().splitlines()]


def test_warn_logs_the_alert_everywhere_and_takes_no_action(tmp_path):
    trainer = StubTrainer(tmp_path)
    (metrics,) = run_steps(AlertMonitor(only("kl", action="warn")), trainer, [{"kl": 0.9}])
    assert alert_lines(tmp_path) == [{"rule": "kl", "step": 1, "message": "KL 0.9 is above the bound 0.5",
                                      "values": {"kl": 0.9, "max_kl": 0.5}, "action": "warn"}]
    assert metrics["alerts/kl"] == 1.0
    assert metrics["text/alerts"] == "**kl** (step 1, warn): KL 0.9 is above the bound 0.5"
    assert trainer.stops == [] and trainer.rollbacks == []


def test_stop_asks_the_trainer_to_stop_with_the_reason(tmp_path):
    trainer = StubTrainer(tmp_path)
    run_steps(AlertMonitor(only("kl", action="stop")), trainer, [{"kl": 0.1}, {"kl": 0.9}])
    assert trainer.stops == ["alert kl: KL 0.9 is above the bound 0.5"]


def test_rollback_lowers_the_learning_rate_and_resets_the_rules_window(tmp_path):
    trainer = StubTrainer(tmp_path)
    monitor = AlertMonitor(only("length", action="rollback", window=3))
    run_steps(monitor, trainer, [{"completion/mean_length": n} for n in (30, 34, 32, 100, 9)])
    # step 4 fires (100 / median 32 > 3) and empties the window, so step 5 has no median to
    # compare with; without the reset 9 / median(34, 32, 100) = 0.26 < 0.3 would fire again
    assert trainer.rollbacks == [0.5]  # monitor.rollback_lr_factor's default
    assert [a["step"] for a in alert_lines(tmp_path)] == [4]


def test_rollback_stops_instead_when_the_limit_is_used_up_or_there_is_no_checkpoint(tmp_path):
    trainer = StubTrainer(tmp_path)
    monitor = AlertMonitor(only("kl", action="rollback").model_copy(update={"max_rollbacks": 1}))
    run_steps(monitor, trainer, [{"kl": 0.9}, {"kl": 0.8}])
    assert trainer.rollbacks == [0.5]
    assert trainer.stops == ["alert kl: KL 0.8 is above the bound 0.5 (max_rollbacks=1 reached, "
                             "stopping instead)"]

    def no_checkpoint(lr_factor):
        raise CheckpointError("runs/x holds no complete checkpoint to roll back to; set save_steps")

    trainer = StubTrainer(tmp_path)
    trainer.rollback = no_checkpoint
    run_steps(AlertMonitor(only("kl", action="rollback")), trainer, [{"kl": 0.9}])
    assert trainer.stops == ["alert kl: KL 0.9 is above the bound 0.5 (cannot roll back, stopping "
                             "instead: runs/x holds no complete checkpoint to roll back to; set save_steps)"]


def test_a_rule_that_fired_is_silent_for_the_cooldown(tmp_path):
    trainer = StubTrainer(tmp_path)
    rows = run_steps(AlertMonitor(only("kl", cooldown_steps=10)), trainer, [{"kl": 0.9}] * 12)
    assert [step for step, m in enumerate(rows, start=1) if "alerts/kl" in m] == [1, 12]


def test_the_reward_shift_rule_reads_the_batchs_per_sample_rewards(tmp_path):
    trainer = StubTrainer(tmp_path)
    monitor = AlertMonitor(only("reward_shift", window=2, max_ks=0.5))
    for step, rewards in enumerate(([0.0, 1.0], [0.0, 1.0], [2.0, 2.0]), start=1):
        batch = SimpleNamespace(rewards=SimpleNamespace(total=torch.tensor(rewards)))
        monitor.on_step_end(trainer, step, batch, {})
    (alert,) = alert_lines(tmp_path)
    assert alert["step"] == 3 and alert["values"]["ks"] == 1.0


def test_alert_state_survives_a_checkpoint_round_trip(tmp_path):
    config = MonitorConfig(alerts={"cooldown_steps": 0, "length": {"window": 3},
                                   "entropy": {"window": 3}, "no_signal": {"steps": 2},
                                   "reward_hacking": {"evals": 2, "window": 2}})
    steps = [{"completion/mean_length": n, "entropy": e, "reward/frac_zero_std": z,
              "reward/mean": r, "reward/format/mean": f, "reward/correctness/mean": c}
             for n, e, z, r, f, c in [(30, 1.0, 0.95, 1.0, 0.5, 0.4), (34, 1.1, 0.2, 1.1, 0.5, 0.4),
                                      (32, 0.9, 0.95, 1.2, 0.9, 0.3)]]
    steps[1]["eval/pass@1"] = 0.6
    later = [{"completion/mean_length": 100, "entropy": 0.2, "reward/frac_zero_std": 0.95,
              "reward/mean": 1.3, "eval/pass@1": 0.4, "reward/format/mean": 0.9,
              "reward/correctness/mean": 0.3}]
    original = AlertMonitor(config)
    run_steps(original, StubTrainer(tmp_path / "a"), steps)
    torch.save(original.state_dict(), tmp_path / "state.pt")
    resumed = AlertMonitor(config)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    expected = run_steps(original, StubTrainer(tmp_path / "a"), later, first=4)
    assert run_steps(resumed, StubTrainer(tmp_path / "b"), later, first=4) == expected
    assert {k for k in expected[0] if k.startswith("alerts/")} == {
        "alerts/length", "alerts/entropy", "alerts/no_signal", "alerts/reward_hacking"}


class Receiver(BaseHTTPRequestHandler):
    bodies: list = []

    def do_POST(self):  # noqa: N802
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_server():
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    Receiver.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", Receiver.bodies
    server.shutdown()
    server.server_close()


def test_webhook_receives_the_alert_json_from_the_url_in_an_env_var(tmp_path, webhook_server, monkeypatch):
    url, bodies = webhook_server
    monkeypatch.setenv("GRPOKIT_TEST_WEBHOOK", url)
    monitor = AlertMonitor(only("truncation", max_rate=0.5).model_copy(
        update={"webhook_url_env": "GRPOKIT_TEST_WEBHOOK"}))
    run_steps(monitor, StubTrainer(tmp_path), [{"completion/truncated_frac": 0.75}])
    assert bodies == [{"rule": "truncation", "step": 1,
                       "message": "75.0% of completions were truncated (bound 50.0%)",
                       "values": {"truncated_frac": 0.75, "max_rate": 0.5}, "action": "warn",
                       "text": "grpokit alert truncation at step 1: 75.0% of completions were "
                               "truncated (bound 50.0%)"}]


def test_a_failing_webhook_never_stops_training(tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{closed_port}/hook"
    assert send_alert(url, {"rule": "kl", "step": 1, "message": "m"}, timeout=2.0) is False
    assert send_alert("not a url", {"rule": "kl", "step": 1, "message": "m"}, timeout=2.0) is False
    monitor = AlertMonitor(only("kl").model_copy(update={"webhook_url": url}))
    run_steps(monitor, StubTrainer(tmp_path), [{"kl": 0.9}])
    assert [a["rule"] for a in alert_lines(tmp_path)] == ["kl"]


def test_a_missing_webhook_env_var_is_an_error_before_training(monkeypatch):
    monkeypatch.delenv("GRPOKIT_NO_SUCH_VAR", raising=False)
    with pytest.raises(ValueError, match="GRPOKIT_NO_SUCH_VAR"):
        AlertMonitor(MonitorConfig(webhook_url_env="GRPOKIT_NO_SUCH_VAR"))


def test_completion_records_hold_prompt_completion_each_reward_and_advantage():
    tokenizer = build_char_tokenizer()
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = tokenizer.eos_token_id
    prompt_ids, prompt_mask = left_pad([encode("2+2="), encode("10+0=")], tokenizer.pad_token_id)
    completions = [encode("4") + [eos], encode("5") + [eos], encode("10") + [eos], encode("abc")]
    completion_ids = torch.tensor([c + [tokenizer.pad_token_id] * (4 - len(c)) for c in completions])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (4 - len(c)) for c in completions])
    rollout = Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask,
                      torch.zeros(4, 4), torch.tensor([False, False, False, True]), group_size=2)
    nan = float("nan")
    rewards = RewardBatch(torch.tensor([[1.0, 1.0], [0.0, nan], [1.0, 1.0], [0.0, 0.0]]),
                          torch.tensor([2.0, 0.0, 2.0, 0.0]), ["correctness", "format"])
    batch = SimpleNamespace(rollout=rollout, rewards=rewards, advantages=torch.tensor([0.5, -0.5, 0.75, -0.75]))
    assert completion_records(batch, tokenizer, [1, 3], step=5) == [
        {"step": 5, "prompt": "2+2=", "completion": "5", "rewards": {"correctness": 0.0, "format": None},
         "reward": 0.0, "advantage": -0.5},
        {"step": 5, "prompt": "10+0=", "completion": "abc", "rewards": {"correctness": 0.0, "format": 0.0},
         "reward": 0.0, "advantage": -0.75},
    ]


def fraction_of_a(prompts, completions, **kwargs):
    return [c.count("a") / max(len(c), 1) for c in completions]


class Probe:
    """Records, after the monitor callbacks, each step's batch, metrics and the model's mode."""

    def __init__(self):
        self.steps = []

    def on_step_end(self, trainer, step, batch, metrics):
        self.steps.append({"batch": batch, "metrics": dict(metrics), "training": trainer.model.training})


def tiny_trainer(tmp_path, callbacks, **overrides):
    tokenizer = build_char_tokenizer()
    model = create_tiny_model(tokenizer, **TINY)
    settings = dict(output_dir=str(tmp_path / "run"), max_steps=3, prompts_per_step=2,
                    num_generations=4, max_completion_length=8, learning_rate=1e-3)
    return GRPOTrainer(model=model, reward_funcs=[fraction_of_a], args=GRPOConfig(**{**settings, **overrides}),
                       train_dataset=ROWS, processing_class=tokenizer, callbacks=callbacks)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_grpo_run_with_a_warning_alert_and_the_completions_log(tmp_path, single_thread):
    monitor = only("entropy", min_entropy=1000.0).model_copy(  # every step's entropy is below 1000 nats
        update={"log_completions_steps": 2, "log_completions_count": 3})
    probe = Probe()
    trainer = tiny_trainer(tmp_path, [*monitor_callbacks(monitor), probe], report_to=["tensorboard"])
    summary = trainer.train(show_progress=False)
    run = tmp_path / "run"
    assert summary["steps"] == 3 and "stopped_early" not in summary
    assert [a["step"] for a in read_jsonl(run / "alerts.jsonl")] == [1, 2, 3]
    assert [m["alerts/entropy"] for m in read_jsonl(run / "metrics.jsonl")] == [1.0, 1.0, 1.0]
    completions = read_jsonl(run / "completions.jsonl")
    assert [c["step"] for c in completions] == [2, 2, 2]
    batch = probe.steps[1]["batch"]
    texts = trainer.tokenizer.batch_decode(batch.rollout.completion_ids, skip_special_tokens=True)
    for record, i in zip(completions, pick_rows(8, 3, step=2), strict=True):
        assert record["prompt"] in {row["prompt"] for row in ROWS}
        assert record["completion"] == texts[i]
        assert record["rewards"] == {"fraction_of_a": pytest.approx(fraction_of_a(None, [texts[i]])[0])}
        assert record["reward"] == pytest.approx(float(batch.rewards.total[i]))
        assert record["advantage"] == pytest.approx(float(batch.advantages[i, 0]))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Tensors("text/alerts/text_summary")] == [1, 2, 3]
    (table,) = events.Tensors("text/completions/text_summary")
    assert tensor_util.make_ndarray(table.tensor_proto)[0].decode().startswith(
        "| prompt | completion | fraction_of_a | reward | advantage |")


def test_grpo_run_stops_on_a_stop_alert(tmp_path, single_thread):
    monitor = only("entropy", min_entropy=1000.0, action="stop").model_copy(update={"log_completions_steps": 0})
    trainer = tiny_trainer(tmp_path, monitor_callbacks(monitor))
    summary = trainer.train(show_progress=False)
    assert [m["step"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1]
    assert summary["stopped_early"].startswith("alert entropy: entropy ")
    assert (tmp_path / "run" / "model").is_dir()


class KLSpikeOnce:
    """Puts a KL of 9 into the metrics the first time step ``at`` ends (a transient divergence)."""

    def __init__(self, at):
        self.at, self.done = at, False

    def on_step_end(self, trainer, step, batch, metrics):
        if step == self.at and not self.done:
            metrics["kl"], self.done = 9.0, True


def test_grpo_run_rolls_back_to_the_last_checkpoint_with_a_lower_learning_rate(tmp_path, single_thread):
    monitor = only("kl", action="rollback").model_copy(update={"log_completions_steps": 0})
    trainer = tiny_trainer(tmp_path, [KLSpikeOnce(at=2), *monitor_callbacks(monitor)], save_steps=1)
    summary = trainer.train(show_progress=False)
    assert summary["rollbacks"] == [{"step": 2, "to_step": 1, "lr_factor": 0.5}]
    lines = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in lines] == [1, 2, 3]  # the rolled-back step 2 is not logged
    assert [m["learning_rate"] for m in lines] == pytest.approx([1e-3, 5e-4, 5e-4])
    assert [a["step"] for a in read_jsonl(tmp_path / "run" / "alerts.jsonl")] == [2]


def test_periodic_eval_logs_held_out_metrics_and_restores_train_mode(tmp_path, single_thread):
    eval_config = EvalConfig(num_samples=2, max_completion_length=8, num_problems=3)
    probe = Probe()
    trainer = tiny_trainer(tmp_path, [PeriodicEval(ROWS, eval_config, every=2), probe], max_steps=2)
    trainer.train(show_progress=False)
    lines = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert "eval/pass@1" not in lines[0]
    assert {"eval/pass@1", "eval/pass@k", "eval/maj@k", "eval/greedy_accuracy", "eval/format_rate",
            "eval/mean_completion_length", "time/eval"} <= set(lines[1])
    assert [s["training"] for s in probe.steps] == [True, True]
    # the last step's evaluation saw the final weights, so evaluating them again agrees
    again = evaluate(trainer.model.eval(), trainer.tokenizer, ROWS, eval_config, show_progress=False)
    assert lines[1]["eval/mean_completion_length"] == again["mean_completion_length"]
    assert lines[1]["eval/pass@1"] == again["pass@1"]


def test_eval_on_start_logs_the_starting_model_as_step_zero_and_the_verifier_is_used(tmp_path, single_thread):
    eval_config = EvalConfig(num_samples=2, max_completion_length=8, num_problems=3)
    every_sample_right = lambda completion, row: True  # noqa: E731
    trainer = tiny_trainer(tmp_path, [PeriodicEval(ROWS, eval_config, every=2, verify=every_sample_right,
                                                   on_start=True)], max_steps=2)
    trainer.train(show_progress=False)
    lines = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [line["step"] for line in lines] == [0, 1, 2]
    assert set(lines[0]) == {"step", "eval/pass@1", "eval/pass@k", "eval/maj@k", "eval/greedy_accuracy",
                             "eval/format_rate", "eval/mean_completion_length", "time/eval"}
    assert lines[0]["eval/pass@1"] == lines[2]["eval/pass@1"] == 1.0  # the given verifier decides


def test_monitor_callbacks_run_eval_first_and_need_held_out_rows():
    config = MonitorConfig(eval_steps=5, eval_num_problems=7)
    callbacks = monitor_callbacks(config, ROWS, EvalConfig(num_samples=2))
    assert [type(c) for c in callbacks] == [PeriodicEval, AlertMonitor, CompletionsLog]
    assert callbacks[0].config.num_problems == 7 and callbacks[0].config.num_samples == 2
    with pytest.raises(ValueError, match="held-out rows"):
        monitor_callbacks(config)
    with pytest.raises(ValueError, match="row 0: no 'answer'"):
        PeriodicEval([{"prompt": "p"}], EvalConfig(), every=1)
