"""Corpus building for the reference models: markup stripping, the held-out rule, one
document per file, and the tokenizer trained on the training split only."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "reference_models"))
import corpus  # noqa: E402


def test_html_text_keeps_visible_text_and_block_breaks():
    html = ("<html><head><title>t</title><style>p {x}</style></head><body><nav>menu</nav>"
            "<h1>Title &amp; more</h1><p>First <b>bold</b> line.</p><script>var x;</script>"
            "<ul><li>one</li><li>two</li></ul></body></html>")  # fmt: skip
    assert corpus.html_to_text(html) == "Title & more\n\nFirst bold line.\n\none\n\ntwo"


def test_pod_text_unwraps_codes_and_keeps_headings():
    pod = "=head1 NAME\n\nperlfunc - B<Perl> I<builtin> C<< $x->y >>\n\n=over 4\n\n=item abs\n"
    assert corpus.pod_to_text(pod) == "NAME\n\nperlfunc - Perl builtin $x->y\n\nabs"


def test_heldout_rule_is_stable_and_roughly_the_percent():
    ids = [f"pkg:doc{i}" for i in range(4000)]
    held = [i for i in ids if corpus.is_heldout(i, 5.0)]
    assert held == [i for i in ids if corpus.is_heldout(i, 5.0)]  # no state, no randomness
    assert 120 < len(held) < 280  # 5% of 4000 = 200
    assert not any(corpus.is_heldout(i, 0.0) for i in ids)


def corpus_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def _fake_package(root: Path) -> Path:
    pod_dir = root / "usr/share/perl/5.36.0/pod"
    pod_dir.mkdir(parents=True)
    body = "Some text about Perl. " * 200
    (pod_dir / "perla.pod").write_text(f"=head1 A\n\n{body}\n")
    (pod_dir / "perlb.pod").write_text(f"=head1 A\n\n{body}\n")  # same text: dropped
    (pod_dir / "short.pod").write_text("=head1 S\n\ntiny\n")  # too short: dropped
    doc = root / "usr/share/doc/perl-doc"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Perl is free software.\n")
    return root


def test_package_documents_one_per_file_deduplicated(tmp_path):
    root = _fake_package(tmp_path / "perl-doc")
    docs = corpus.package_documents(root, "perl-doc", min_chars=500)
    assert [d.id for d in docs] == ["perl-doc:usr/share/perl/5.36.0/pod/perla.pod"]
    assert docs[0].text.startswith("A\n\nSome text about Perl.")


def test_build_splits_and_tokenizer_never_sees_heldout(tmp_path, monkeypatch):
    pytest.importorskip("tokenizers")
    debs = tmp_path / "debs"
    (debs / "extracted").mkdir(parents=True)
    root = debs / "extracted" / "perl-doc"
    pod_dir = root / "usr/share/perl/5.36.0/pod"
    pod_dir.mkdir(parents=True)
    for i in range(60):
        (pod_dir / f"p{i}.pod").write_text(f"=head1 D{i}\n\n" + f"word{i} text " * 100)
    (root / "usr/share/doc/perl-doc").mkdir(parents=True)
    (root / "usr/share/doc/perl-doc/copyright").write_text("free\n")
    (debs / "perl-doc_5.36.0-7_all.deb").write_bytes(b"")  # present: nothing fetched
    manifest = corpus.build(tmp_path / "out", debs, ["perl-doc"], 100, 10.0)
    assert manifest["packages"]["perl-doc"] == {"version": "5.36.0-7", "documents": 60,
                                                "chars": manifest["train"]["chars"]
                                                + manifest["heldout"]["chars"]}  # fmt: skip
    held, train = ([json.loads(x)["id"] for x in corpus_lines(tmp_path / f"out/{s}.jsonl.gz")]
                   for s in ("heldout", "train"))  # fmt: skip
    assert held == manifest["heldout_ids"] and held and not set(held) & set(train)
    assert (tmp_path / "out/licenses/perl-doc.copyright").read_text() == "free\n"

    import tokenizer  # examples/reference_models/tokenizer.py

    tok = tokenizer.train(tmp_path / "out", tmp_path / "tok", vocab_size=400)
    vocab = tok.get_vocab()
    held_words = {f"word{x.split('/p')[-1].removesuffix('.pod')}" for x in held}
    assert not any(w in vocab or f"Ġ{w}" in vocab for w in held_words if len(w) > 5)
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.eos_token == "<|endoftext|>" and loaded("word1 text")["input_ids"]


@pytest.mark.slow
def test_training_script_runs_resumes_and_saves(tmp_path):
    """A few steps on a tiny corpus: log, resume, summary, and a model that loads."""
    import subprocess

    pytest.importorskip("tokenizers")
    debs = tmp_path / "debs"
    pod_dir = debs / "extracted" / "perl-doc" / "usr/share/perl/5.36.0/pod"
    pod_dir.mkdir(parents=True)
    for i in range(30):
        (pod_dir / f"p{i}.pod").write_text(f"=head1 D{i}\n\n" + f"word{i} some text " * 200)
    (debs / "perl-doc_5.36.0-7_all.deb").write_bytes(b"")
    corpus.build(tmp_path / "corpus", debs, ["perl-doc"], 100, 10.0)
    import tokenizer

    tokenizer.train(tmp_path / "corpus", tmp_path / "tok", vocab_size=300)
    script = Path(corpus.__file__).with_name("train.py")
    common = [sys.executable, str(script), "--corpus", str(tmp_path / "corpus"),
              "--tokenizer", str(tmp_path / "tok"), "--context", "64", "--hidden", "32",
              "--layers", "2", "--heads", "2", "--batch", "2", "--eval-every", "2",
              "--eval-windows", "2"]  # fmt: skip
    for position in ("rope", "hype"):
        out = tmp_path / position
        for steps in ("2", "4"):  # the second run resumes from the saved state
            cmd = [*common, "--position", position, "--out", str(out), "--steps", steps,
                   "--resume"]  # fmt: skip
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stderr[-2000:]
        steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").open()]
        assert steps == [2, 4]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["step"] == 4 and summary["tokens"] == 4 * 2 * 64
        import hf_hyper

        if position == "hype":
            model = hf_hyper.load_hype_model(out / "model")
            assert model.config.hf_hyper_hype["learnable"]
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(out / "model")
        assert model.config.num_hidden_layers == 2
