"""Rejection sampling: the keep rules, and a real sampling run with verifiers and a judge server."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from grpokit.config import SampleConfig
from grpokit.models import create_embedded_default
from grpokit.recipes.rejection_sampling import jaccard, passes_verifiers, rejection_sample, select, shingles


def candidate(text, **rewards):
    return {"completion": text, "rewards": rewards}


def test_near_duplicates_are_dropped_by_jaccard_threshold():
    a, b = "a4=4,b7=11,c1=12", "a4=4,b7=11,c1=12 "  # differs by trailing space only
    c = "a4=4,b7=11,c2=13"
    assert jaccard(shingles(a), shingles(b)) == 1.0
    similarity = jaccard(shingles(a), shingles(c))
    assert 0.5 < similarity < 1.0
    strict = SampleConfig(min_rewards={}, near_duplicate_threshold=1.0, max_per_prompt=5)
    loose = SampleConfig(min_rewards={}, near_duplicate_threshold=similarity, max_per_prompt=5)
    kept_strict, _ = select([candidate(a), candidate(b), candidate(c)], strict)
    kept_loose, why = select([candidate(a), candidate(b), candidate(c)], loose)
    assert [k["completion"] for k in kept_strict] == [a, c]
    assert [k["completion"] for k in kept_loose] == [a] and why["duplicate"] == 2


def test_judge_verdict_below_minimum_or_missing_rejects():
    cfg = SampleConfig(min_rewards={"ok": 1.0}, judge_min_score=0.5, max_per_prompt=5)
    group = [dict(candidate("x1", ok=1.0), judge={"score": 0.4}),
             dict(candidate("y22", ok=1.0), judge={"score": None, "error": "timeout"}),
             dict(candidate("z333", ok=1.0), judge={"score": 0.5})]
    kept, why = select(group, cfg)
    assert [k["completion"] for k in kept] == ["z333"] and why == {"judge": 2}


def test_not_applicable_rewards_do_not_block():
    assert passes_verifiers({"correctness": None, "format": 1.0}, {"correctness": 1.0, "format": 1.0})
    assert not passes_verifiers({"correctness": 0.0, "format": 1.0}, {"correctness": 1.0})


def odd_length(prompts, completions, **kwargs):
    return [float(len(c) % 2) for c in completions]


class VerdictHandler(BaseHTTPRequestHandler):
    """A judge that gives 10 to completions starting with a letter, else 0; counts requests."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        completion = body["messages"][0]["content"]
        self.server.asked.append(completion)
        text = "SCORE: 10" if completion[:1].isalpha() else "SCORE: 0"
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), VerdictHandler)
    server.asked = []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return create_embedded_default(tmp_path_factory.mktemp("base"), seed=3)


def rows(n):
    return [{"prompt": f"sum a{i % 10}b{(3 * i) % 10}:", "answer": str(i % 10 + (3 * i) % 10), "level": i % 2}
            for i in range(n)]


def test_sampling_run_keeps_only_verified_distinct_capped_samples(tmp_path, model_dir, single_thread):
    cfg = SampleConfig(output_dir=str(tmp_path / "rs"), num_samples=6, max_per_prompt=2,
                       max_completion_length=12, min_rewards={"odd_length": 1.0},
                       near_duplicate_threshold=1.0, difficulty_column="level")
    summary = rejection_sample(model_dir, rows(8), [odd_length], cfg, show_progress=False)
    kept = [json.loads(line) for line in (tmp_path / "rs" / "sft.jsonl").read_text().splitlines()]
    assert summary["sampled"] == 48 and summary["kept"] == len(kept) > 0
    assert summary["kept"] + sum(summary["rejected_by"].values()) == 48
    assert all(len(row["completion"]) % 2 == 1 for row in kept)
    per_prompt = {}
    for row in kept:
        per_prompt.setdefault(row["prompt"], []).append(row["completion"])
        assert row["provenance"]["source_model"] == str(model_dir)
        assert row["provenance"]["rewards"] == {"odd_length": 1.0} and "answer" in row
    assert all(len(texts) <= 2 and len(set(texts)) == len(texts) for texts in per_prompt.values())
    by_level = summary["acceptance_by_difficulty"]
    assert set(by_level) == {"0", "1"} and sum(b["kept"] for b in by_level.values()) == len(kept)
    assert summary["acceptance_rate"] == pytest.approx(len(kept) / 48)
    assert not (tmp_path / "rs" / "sft.jsonl.tmp").exists()


def test_judge_is_asked_only_about_verified_samples(tmp_path, model_dir, judge_server, single_thread):
    judge = {"base_url": f"http://127.0.0.1:{judge_server.server_address[1]}/v1", "model": "judge",
             "rubric": "{completion}", "backoff_s": 0.0}
    cfg = SampleConfig(output_dir=str(tmp_path / "rs"), num_samples=6, max_per_prompt=6,
                       max_completion_length=12, min_rewards={"odd_length": 1.0}, judge=judge,
                       near_duplicate_threshold=1.0)
    summary = rejection_sample(model_dir, rows(6), [odd_length], cfg, show_progress=False)
    kept = [json.loads(line) for line in (tmp_path / "rs" / "sft.jsonl").read_text().splitlines()]
    assert judge_server.asked and all(len(c) % 2 == 1 for c in judge_server.asked)
    assert all(row["completion"][:1].isalpha() and row["provenance"]["judge"]["score"] == 1.0 for row in kept)
    judged_bad = sum(not c[:1].isalpha() for c in judge_server.asked)  # distinct requests
    assert (summary["rejected_by"].get("judge", 0) >= judged_bad > 0) or judged_bad == 0


def test_threshold_on_an_unconfigured_reward_is_an_error(tmp_path, model_dir):
    cfg = SampleConfig(output_dir=str(tmp_path / "rs"), min_rewards={"correctness": 1.0})
    with pytest.raises(ValueError, match="correctness not among the configured rewards"):
        rejection_sample(model_dir, rows(2), [odd_length], cfg, show_progress=False)
