"""Trainer callbacks (``on_step_end(trainer, step, batch, metrics)``) for the monitor section.

``monitor_callbacks`` builds them in the order they must run: the periodic evaluation first
(its ``eval/`` metrics feed the reward-hacking rule), then the alerts, then the completions
log. Keys they add to ``metrics`` reach every sink; string values are text views.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

from rich import get_console

from grpokit.config import EvalConfig, MonitorConfig
from grpokit.data import validate_prompt_rows
from grpokit.errors import CheckpointError, ConfigError, DatasetError
from grpokit.parallel.ranks import gather_lists, ranks
from grpokit.evaluation.evaluate import Verifier, answer_matches, evaluate
from grpokit.monitoring.alerts import Alert, StepRecord, build_rules
from grpokit.monitoring.completions_log import (
    RunFile,
    completion_records,
    completions_markdown,
    pick_rows,
)
from grpokit.monitoring.webhook import send_alert, webhook_url


class PeriodicEval:
    """Every ``every`` steps, evaluate the policy on held-out rows (``prompt``, ``answer``) and
    add ``eval/pass@1``, ``eval/greedy_accuracy``, ... and ``time/eval`` to the step's metrics.

    The model is evaluated in eval mode under the trainer's autocast and put back into train
    mode afterwards; sampling uses the evaluation's own seeded generator, so the training
    samples do not change.
    """

    def __init__(self, rows: list[dict], config: EvalConfig, every: int, verify: Verifier = answer_matches,
                 on_start: bool = False):
        validate_prompt_rows(rows, "held-out rows")
        for i, row in enumerate(rows):
            if "answer" not in row:
                raise DatasetError(f"held-out rows row {i}: no 'answer' column; periodic "
                                   "evaluation needs prompt and answer")
        self.rows, self.config, self.every, self.verify = rows, config, every, verify
        self.on_start = on_start

    def on_train_begin(self, trainer, metrics: dict) -> None:
        """With ``on_start``, the starting model's results as step 0's metrics."""
        if self.on_start:
            self.evaluate(trainer, metrics)

    def on_step_end(self, trainer, step: int, batch, metrics: dict) -> None:
        if step % self.every == 0:
            self.evaluate(trainer, metrics)

    def evaluate(self, trainer, metrics: dict) -> None:
        started, model = time.perf_counter(), trainer.model
        model.eval()
        try:
            with getattr(trainer, "autocast", nullcontext)():  # SFT has no autocast
                results = evaluate(model, trainer.tokenizer, self.rows, self.config, show_progress=False,
                                   verify=self.verify)
        finally:
            model.train()
        metrics.update({f"eval/{k}": float(v) for k, v in results.items()
                        if k not in ("k", "num_problems")})
        metrics["time/eval"] = time.perf_counter() - started


class CompletionsLog:
    """Every ``every`` steps, write ``count`` of the step's completions (prompt, completion,
    each reward, the total, the advantage) to ``completions.jsonl`` and, as a markdown table,
    to the sinks' text views under ``text/completions``. For trainers that sample (GRPO, PPO:
    their batches have ``rollout``, ``rewards`` and ``advantages``)."""

    run_files = ("completions.jsonl",)  # cut back to the checkpoint on resume

    def __init__(self, every: int, count: int):
        self.every, self.count, self.file = every, count, RunFile("completions.jsonl")

    def on_step_end(self, trainer, step: int, batch, metrics: dict) -> None:
        if not ranks().is_main:  # under torchrun rank 0 logs its own completions
            return
        self.file.attach(trainer.args.output_dir, step)
        if step % self.every:
            return
        rows = pick_rows(batch.rollout.num_completions, self.count, step)
        records = completion_records(batch, trainer.tokenizer, rows, step)
        for record in records:
            self.file.append(record)
        metrics["text/completions"] = completions_markdown(records)


class AlertMonitor:
    """Run every active alert rule after each step and carry out what each firing asks.

    A firing is printed, appended to ``alerts.jsonl``, added to the metrics as ``alerts/<rule>
    = 1`` and as text under ``text/alerts``, and POSTed to the webhook when one is configured.
    Then its action: ``warn`` nothing more; ``stop`` calls ``trainer.request_stop(reason)``;
    ``rollback`` calls ``trainer.rollback(lr_factor=...)`` once per step and resets the rules
    that asked for it, or stops training when ``max_rollbacks`` are used up or there is no
    checkpoint. A rule that fired stays silent for ``alerts.cooldown_steps`` steps.
    """

    run_files = ("alerts.jsonl",)  # cut back to the checkpoint on resume

    def __init__(self, config: MonitorConfig):
        self.rules = build_rules(config.alerts)
        self.cooldown = config.alerts.cooldown_steps
        self.webhook_url = webhook_url(config.webhook_url, config.webhook_url_env)
        self.webhook_timeout = config.webhook_timeout
        self.lr_factor = config.rollback_lr_factor
        self.max_rollbacks, self.rollbacks_done = config.max_rollbacks, 0
        self.last_fired: dict[str, int] = {}
        self.file = RunFile("alerts.jsonl")

    def on_step_end(self, trainer, step: int, batch, metrics: dict) -> None:
        self.file.attach(trainer.args.output_dir, step)
        scored = getattr(batch, "rewards", None)  # GRPO and PPO batches; None for SFT's
        # every rank's rewards, so that under torchrun all ranks decide alike
        rewards = tuple(gather_lists(scored.total.tolist())) if scored is not None else ()
        record = StepRecord(step, dict(metrics), rewards)
        fired = []
        for rule, action in self.rules:
            alert = rule.update(record)
            if alert is not None and not self.cooling_down(rule.name, step):
                self.last_fired[rule.name] = step
                fired.append((rule, alert, action))
        for _, alert, action in fired:
            self.report(alert, action, metrics)
        self.act(trainer, fired)

    def state_dict(self) -> dict:
        """Rule windows and cooldowns, kept in checkpoints. The rollback count is left out: a
        rollback restores the checkpoint's state and must not forget that it happened."""
        return {"last_fired": dict(self.last_fired),
                "rules": {rule.name: rule.state_dict() for rule, _ in self.rules}}

    def load_state_dict(self, state: dict) -> None:
        self.last_fired = dict(state["last_fired"])
        for rule, _ in self.rules:
            if rule.name in state["rules"]:
                rule.load_state_dict(state["rules"][rule.name])

    def cooling_down(self, name: str, step: int) -> bool:
        last = self.last_fired.get(name)
        return last is not None and step - last <= self.cooldown

    def report(self, alert: Alert, action: str, metrics: dict) -> None:
        metrics[f"alerts/{alert.rule}"] = 1.0
        if not ranks().is_main:  # rank 0 tells
            return
        entry = {**alert.to_json(), "action": action}
        style = "bold red" if action != "warn" else "bold yellow"
        get_console().print(f"[{style}]alert[/] {alert.rule} at step {alert.step}: {alert.message} "
                            f"(action: {action})", highlight=False, soft_wrap=True)
        self.file.append(entry)
        line = f"**{alert.rule}** (step {alert.step}, {action}): {alert.message}"
        metrics["text/alerts"] = "\n\n".join(filter(None, [metrics.get("text/alerts"), line]))
        if self.webhook_url:
            send_alert(self.webhook_url, entry, self.webhook_timeout)

    def act(self, trainer, fired: list) -> None:
        stop_reasons = [reason(alert) for _, alert, action in fired if action == "stop"]
        rollbacks = [(rule, alert) for rule, alert, action in fired if action == "rollback"]
        if rollbacks:
            failure = self.roll_back(trainer, [rule for rule, _ in rollbacks],
                                     "; ".join(reason(alert) for _, alert in rollbacks))
            stop_reasons += [failure] if failure else []
        if stop_reasons:
            trainer.request_stop("; ".join(stop_reasons))

    def roll_back(self, trainer, rules: list, why: str) -> str | None:
        """Roll back once and reset ``rules``; return a stop reason when it cannot be done."""
        if self.rollbacks_done >= self.max_rollbacks:
            return f"{why} (max_rollbacks={self.max_rollbacks} reached, stopping instead)"
        try:
            restored = trainer.rollback(lr_factor=self.lr_factor)
        except CheckpointError as error:
            return f"{why} (cannot roll back, stopping instead: {error})"
        self.rollbacks_done += 1
        for rule in rules:
            rule.reset()
            self.last_fired.pop(rule.name, None)
        if ranks().is_main:
            get_console().print(f"rolled back to step {restored}; learning rate x{self.lr_factor}",
                                highlight=False, soft_wrap=True)
        return None


def reason(alert: Alert) -> str:
    """How an alert is named in a stop request."""
    return f"alert {alert.rule}: {alert.message}"


def monitor_callbacks(config: MonitorConfig, eval_rows: list[dict] | None = None,
                      eval_config: EvalConfig | None = None, verify: Verifier = answer_matches) -> list:
    """The callbacks ``config`` asks for, in run order, for a GRPO or PPO trainer. Periodic
    evaluation (``eval_steps > 0``) needs held-out rows; it uses ``eval_config`` (the run's
    ``eval`` section) with ``num_problems = config.eval_num_problems``."""
    callbacks = []
    if config.eval_steps:
        if not eval_rows:
            raise ConfigError("monitor.eval_steps is set but no held-out rows were given")
        settings = (eval_config or EvalConfig()).model_copy(
            update={"num_problems": config.eval_num_problems})
        callbacks.append(PeriodicEval(eval_rows, settings, config.eval_steps, verify, config.eval_on_start))
    alerts = AlertMonitor(config)
    if alerts.rules:
        callbacks.append(alerts)
    if config.log_completions_steps:
        callbacks.append(CompletionsLog(config.log_completions_steps, config.log_completions_count))
    return callbacks
