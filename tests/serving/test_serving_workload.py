"""Serving workload files: shipped ones load with the cited means; bad files give one line."""
import pytest

from simulator.core.errors import RoofplanError
from simulator.serving.workload import load_serving_workload


def test_shipped_workloads_match_cited_means():
    chat = load_serving_workload("chat").mix()
    # ShareGPT means quoted by vLLM (Kwon et al. 2023): input 161, output 338 tokens
    assert chat.mean(chat.in_tokens) == pytest.approx(161, rel=0.05)
    assert chat.mean(chat.out_tokens) == pytest.approx(338, rel=0.05)
    doc = load_serving_workload("long-document").mix()
    # arXiv (Cohan et al. 2018): 4938-word documents, 220-word abstracts, ~1.3 tokens/word
    assert doc.mean(doc.in_tokens) == pytest.approx(4938 * 1.3, rel=0.10)
    assert doc.mean(doc.out_tokens) == pytest.approx(220 * 1.3, rel=0.15)
    mixed = load_serving_workload("mixed")
    assert sum(b.share for b in mixed.buckets) == pytest.approx(1.0)


@pytest.mark.parametrize("text,msg", [
    ("request_rate_rps: 1\ninput_tokens: {edges: [1, 2], shares: [1]}\noutput_tokens: {edges: [1, 2], shares: [1]}\n", "'source' is missing"),
    ("source: x\nrequest_rate_rps: -1\n", "request_rate_rps"),
    ("source: x\nrequest_rate_rps: 1\ninput_tokens: {edges: [1, 2, 3], shares: [1]}\noutput_tokens: {edges: [1, 2], shares: [1]}\n", "needs one more edge than shares"),
    ("source: x\nrequest_rate_rps: 1\ninput_tokens: {edges: [5, 2], shares: [1]}\noutput_tokens: {edges: [1, 2], shares: [1]}\n", "must increase"),
    ("source: x\nrequest_rate_rps: 1\nsamples: [[1, 0]]\n", "samples"),
    ("source: [x\n", "malformed YAML"),
])
def test_bad_workload_files(tmp_path, text, msg):
    p = tmp_path / "w.yaml"
    p.write_text(text)
    with pytest.raises(RoofplanError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")) as e:
        load_serving_workload(str(p))
    assert "\n" not in str(e.value)


def test_unknown_workload_suggests():
    with pytest.raises(RoofplanError, match="did you mean: chat"):
        load_serving_workload("chatt")


def test_samples_are_pairs_of_token_counts(tmp_path):
    """YAML gives lists: a [input, output] pair is read as such (a strict tuple refused it), and a
    triple is one line naming the sample."""
    p = tmp_path / "w.yaml"
    p.write_text("source: x\nrequest_rate_rps: 2\nsamples: [[60000, 16], [100, 20]]\n")
    w = load_serving_workload(str(p))
    assert [(b.in_tokens, b.out_tokens, b.share) for b in w.buckets] == [(60000, 16, 0.5), (100, 20, 0.5)]
    p.write_text("source: x\nrequest_rate_rps: 2\nsamples: [[60000, 16, 3]]\n")
    with pytest.raises(RoofplanError, match=r"field 'samples\[0\]' list should have at most 2 items"):
        load_serving_workload(str(p))
