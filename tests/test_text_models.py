"""Text-only causal LMs (the PCICN setting) on tiny offline Llama and Qwen2 models: texts and their windows, the
reference PPL on the text under the masked model, rankings against hand computations, the plugin's text cases
and the full-size architectures of the families PCICN studies, on the meta device."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness.core.errors import SiteResolutionError, TextFileError, UnknownNameError
from harness.data.texts import BUILTIN_CATEGORY, BUILTIN_PARAGRAPH, TextWindow, load_text_set, text_windows
from harness.models.captioning import score_captions
from harness.models.families import get_family
from harness.models.sites import resolve_site, site_size
from harness.runner.session import HarnessSession
from harness.runner.settings import HarnessSettings
from harness.science.ranking import importance
from harness.science.ranking_options import RankingOptions

pytest_plugins = ["pytester"]
TEXT = BUILTIN_CATEGORY
TEXT_MODELS = ("tiny-llama", "tiny-qwen2")  # a BOS-adding word-level tokenizer; Qwen2's byte-level BPE, no BOS


@pytest.fixture(scope="module")
def text_session(cache_dir) -> HarnessSession:
    settings = HarnessSettings(
        cache_dir=cache_dir, text_window=40, max_new_tokens=10, batch_size=2, device="cpu", dtype="float32"
    )
    return HarnessSession(settings)


@pytest.fixture(scope="module", params=TEXT_MODELS)
def text_experiment(request, text_session):
    return text_session.experiment(request.param)


# -- texts ----------------------------------------------------------------------------------------------------
def test_without_files_the_texts_are_the_built_in_paragraph():
    texts = load_text_set()
    assert texts.categories == [BUILTIN_CATEGORY] and texts.text(BUILTIN_CATEGORY) == BUILTIN_PARAGRAPH


def test_each_file_is_a_category_named_by_its_stem(tmp_path):
    (tmp_path / "news.txt").write_text("The river rose.")
    (tmp_path / "tale.md").write_text("Once upon a time.")
    texts = load_text_set((tmp_path / "news.txt", tmp_path / "tale.md"))
    assert texts.categories == ["news", "tale"] and texts.text("tale") == "Once upon a time."
    assert texts.content_hash("news") != texts.content_hash("tale")
    with pytest.raises(UnknownNameError, match="unknown text 'poem'; valid choices: news, tale"):
        texts.text("poem")


def test_every_bad_text_file_is_named_in_one_error(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "folder.txt").mkdir()
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("two")
    (tmp_path / "nul.txt").write_bytes(b"\0" * 64)  # valid UTF-8, one <unk> to a tokenizer
    (tmp_path / "digits.txt").write_text("3.14159 2.71828 -- 1/2 = 0.5 ...")
    names = ("empty.txt", "latin1.txt", "folder.txt", "missing.txt", "nul.txt", "digits.txt", "a.txt")
    with pytest.raises(TextFileError) as error:
        load_text_set((*(tmp_path / name for name in names), tmp_path / "sub" / "a.txt"))
    message = str(error.value)
    assert message.startswith("7 problem(s) with the texts")
    for expected in (
        "empty.txt: empty", "latin1.txt: not UTF-8", "folder.txt: a folder", "missing.txt: no such",
        "nul.txt: holds 64 NUL byte(s): a binary file", "digits.txt: has no letters",
    ):  # fmt: skip
        assert expected in message
    assert "a second text named 'a'" in message


def test_by_default_a_text_is_one_sequence_with_the_tokenizers_own_special_tokens(text_experiment):
    """As PCICN's authors score it: `tokenizer(text)`, truncated at 512 tokens — a BOS where the tokenizer adds one
    (tiny-llama), none where it does not (tiny-qwen2)."""
    tokenizer = text_experiment.loaded.tokenizer
    expected = tokenizer(BUILTIN_PARAGRAPH)["input_ids"]
    assert text_windows(tokenizer, BUILTIN_PARAGRAPH) == [TextWindow(tuple(expected))]
    assert (expected[0] == tokenizer.bos_token_id) == (text_experiment.name == "tiny-llama")
    assert text_windows(tokenizer, BUILTIN_PARAGRAPH, max_tokens=20) == [TextWindow(tuple(expected[:20]))]


def test_windows_cut_the_tokenised_text_in_order_each_with_the_special_tokens(text_experiment):
    tokenizer = text_experiment.loaded.tokenizer
    whole = tokenizer(BUILTIN_PARAGRAPH, add_special_tokens=False)["input_ids"]
    prefix = [tokenizer.bos_token_id] if text_experiment.name == "tiny-llama" else []
    windows = text_windows(tokenizer, BUILTIN_PARAGRAPH, window=40)
    assert all(list(w.tokens[: len(prefix)]) == prefix for w in windows)
    assert [t for w in windows for t in w.tokens[len(prefix) :]] == whole
    assert all(len(w.tokens) == 40 + len(prefix) for w in windows[:-1])
    first_80 = text_windows(tokenizer, BUILTIN_PARAGRAPH, window=40, max_tokens=80)
    assert first_80 == windows[:2]


def test_a_window_scores_every_token_after_its_first():
    window = TextWindow((1, 7, 8, 9, 10))
    assert (window.scoring_prompt, window.scored, window.opening) == ((1,), (7, 8, 9, 10), (1, 7))


def test_too_short_a_text_or_window_is_an_error(text_session):
    tokenizer = text_session.experiment("tiny-qwen2").loaded.tokenizer  # no BOS: one token scores nothing
    with pytest.raises(TextFileError, match=r"sequences of 1 token\(s\); each needs 2 to be scored"):
        text_windows(tokenizer, "a")
    with pytest.raises(ValueError, match="at least 2 tokens"):
        text_windows(tokenizer, BUILTIN_PARAGRAPH, max_tokens=1)
    with pytest.raises(ValueError, match="at least 1 token, got 0"):
        text_windows(tokenizer, BUILTIN_PARAGRAPH, window=0)
    with pytest.raises(ValueError, match="text_max_tokens must be ≥ 2"):
        HarnessSettings(text_max_tokens=1)
    with pytest.raises(ValueError, match="text_window must be ≥ 1"):
        HarnessSettings(text_window=0)


# -- the text experiment --------------------------------------------------------------------------------------
def window_nll_by_hand(model, window: TextWindow, hook=None) -> float:
    """Mean NLL of the window's scored tokens: one unpadded forward pass, optionally with a forward hook."""
    ids = torch.tensor([window.tokens])
    handle = hook() if hook else None
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double()
    finally:
        if handle is not None:
            handle.remove()
    start = len(window.scoring_prompt)
    logprobs = logits[start - 1 : -1].log_softmax(-1)
    targets = ids[0, start:]
    return float(-logprobs.gather(-1, targets[:, None]).mean())


def test_baseline_ppl_is_the_ppl_of_the_text(text_experiment):
    windows = text_experiment.probe.windows(TEXT)
    expected = [window_nll_by_hand(text_experiment.loaded.model, w) for w in windows]
    point = text_experiment.measure("lm.down_proj", TEXT, 0)
    assert text_experiment.baseline(TEXT).reference_nll == pytest.approx(expected, rel=1e-5)
    assert point.metrics["log10_ppl"] == pytest.approx(sum(expected) / len(expected) / math.log(10), rel=1e-5)
    assert point.n_samples == len(windows) and "clip" not in point.metrics and "clip" not in point.baselines


def test_masked_reference_ppl_is_the_text_under_the_masked_model(text_experiment, unmodified_text_models):
    """PCICN's measure: the same text, scored by the model with the top-k down_proj channels zeroed (here by a
    hook written out by hand)."""
    k = 6
    site = text_experiment.site("lm.down_proj")
    chosen = text_experiment.ranking("lm.down_proj", TEXT).top_k(k)
    by_layer = [chosen[chosen // site.width == layer] % site.width for layer in range(site.n_layers)]

    def zero_hooks():
        handles = [
            module.register_forward_hook(lambda m, a, out, c=channels: out.index_fill(-1, c, 0.0))
            for module, channels in zip(site.modules, by_layer, strict=True)
        ]
        return SimpleNamespace(remove=lambda: [h.remove() for h in handles])

    expected = [
        window_nll_by_hand(text_experiment.loaded.model, w, zero_hooks)
        for w in text_experiment.probe.windows(TEXT)
    ]
    point = text_experiment.measure("lm.down_proj", TEXT, k)
    assert point.metrics["log10_ppl"] == pytest.approx(sum(expected) / len(expected) / math.log(10), rel=1e-5)
    assert point.log10_ppl_ratio == pytest.approx(point.metrics["log10_ppl"] - point.baselines["log10_ppl"])
    assert point.log10_ppl_ratio != 0


def test_continuations_rescored_teacher_forced_reproduce_their_generation_nll(text_experiment):
    """The text path's prompts (left-padded token ids) line up in generation and in teacher-forced scoring."""
    continuations = text_experiment.baseline(TEXT).captions
    rescored = score_captions(text_experiment.loaded, text_experiment.samples(TEXT), continuations, batch_size=2)
    assert rescored == pytest.approx([c.self_nll for c in continuations], rel=1e-4, abs=1e-5)
    assert all(c.token_ids for c in continuations)


def test_can_on_a_text_is_the_hand_computed_attribution(text_experiment):
    """CAN (α = 1) of lm.down_proj: per window, mean over every position of |∂L/∂a|·|a| with L the window's mean
    NLL, then the mean over windows; each window in its own unpadded forward pass."""
    model, site = text_experiment.loaded.model, text_experiment.site("lm.down_proj")
    per_window, captured = [], []
    for window in text_experiment.probe.windows(TEXT):
        captured.clear()
        handles = [m.register_forward_hook(lambda m, a, out: captured.append(out)) for m in site.modules]
        embed = model.get_input_embeddings()
        handles.append(embed.register_forward_hook(lambda m, a, out: out.requires_grad_()))
        try:
            ids = torch.tensor([window.tokens])
            start = len(window.scoring_prompt)
            logits = model(input_ids=ids).logits[0]
            loss = -logits[start - 1 : -1].log_softmax(-1).gather(-1, ids[0, start:, None]).mean()
            grads = torch.autograd.grad(loss, captured)
        finally:
            for handle in handles:
                handle.remove()
        per_window.append(torch.stack([(g * a).abs()[0].mean(0) for g, a in zip(grads, captured, strict=True)]))
    expected = torch.stack(per_window).mean(0)
    actual = importance(
        text_experiment.loaded, site, *text_experiment.ranking_data(TEXT), options=RankingOptions(), batch_size=2
    )
    assert torch.allclose(actual, expected.detach(), rtol=1e-4, atol=1e-7), (actual - expected).abs().max()


def test_pcicn_on_a_text_reproduces_its_definition(text_experiment):
    """Noise ~ N(0, σ²) on the input-embedding output, K draws per window from one seeded CPU generator; each
    element scores the mean over draws of |a_clean − a_noisy|; a channel, the max (default) or the mean of its
    elements over positions, then the mean over windows (one window per batch, so the draws line up)."""
    model, site = text_experiment.loaded.model, text_experiment.site("lm.down_proj")
    embed = model.get_input_embeddings()
    sigma, samples, seed = 5.0, 3, 11
    generator = torch.Generator().manual_seed(seed)

    def outputs(ids, noise=None):
        seen = []
        handles = [m.register_forward_hook(lambda m, a, out: seen.append(out[0].double())) for m in site.modules]
        if noise is not None:
            handles.append(embed.register_forward_hook(lambda m, a, out: out + noise))
        try:
            with torch.no_grad():
                model(input_ids=ids)
        finally:
            for handle in handles:
                handle.remove()
        return seen

    per_window = []  # [window] → [layer, position, channel] mean over the draws of |clean − noisy|
    for window in text_experiment.probe.windows(TEXT):
        ids = torch.tensor([window.tokens])
        clean, total = outputs(ids), 0
        for _ in range(samples):
            noise = sigma * torch.randn((1, ids.shape[1], embed.embedding_dim), generator=generator)
            noisy = outputs(ids, noise)
            total = total + torch.stack([(c - n).abs() for c, n in zip(clean, noisy, strict=True)])
        per_window.append(total / samples)
    for aggregate, over_positions in (("max", lambda e: e.amax(1)), ("mean", lambda e: e.mean(1))):
        expected = torch.stack([over_positions(e) for e in per_window]).mean(0).float()
        options = RankingOptions(
            method="pcicn", noise_sigma=sigma, noise_samples=samples, seed=seed, aggregate=aggregate
        )
        actual = importance(
            text_experiment.loaded, site, *text_experiment.ranking_data(TEXT), options=options, batch_size=1
        )
        assert expected.abs().max() > 0
        assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-6), (aggregate, (actual - expected).abs().max())


def test_a_ranking_is_cached_under_its_text(text_experiment):
    """A text model's key holds the text's hash and how it is cut (its kind's settings), nothing of images."""
    record = text_experiment.ranking_inputs("lm.down_proj", TEXT)
    assert record["data"] == {"texts": [hashlib.sha256(BUILTIN_PARAGRAPH.encode()).hexdigest()]}
    assert (record["text_window"], record["text_max_tokens"]) == (40, 512)
    assert not {"clip_model", "max_image_pixels", "stage1_clip_fraction"} & set(record)


@pytest.fixture
def unmodified_text_models(text_session):
    yield
    for experiment in text_session._experiments.values():
        experiment.loaded.assert_unmodified()


def test_text_models_have_no_clip_and_their_stages_rest_on_ppl_and_degenerate_text(text_experiment):
    point = text_experiment.measure("lm.down_proj", TEXT, 2)
    assert "clip" not in point.metrics and point.chance == {}
    assert not {"clip_model", "stage1_clip_fraction"} & set(point.options)  # image settings: not a text's
    assert point.options["text_stage2"] == "ppl"
    assert not hasattr(text_experiment, "clip") and not hasattr(text_experiment, "images")


# -- full-size architectures on the meta device ---------------------------------------------------------------
FULL_SIZE_TEXT_MODELS = {  # architecture, its published sizes, (layers, hidden, intermediate)
    "llama-2-7b": ("LlamaConfig", {"num_attention_heads": 32, "vocab_size": 32000}, (32, 4096, 11008)),
    "qwen2.5-0.5b": ("Qwen2Config", {"num_attention_heads": 14, "num_key_value_heads": 2}, (24, 896, 4864)),
    "gemma-7b": ("GemmaConfig", {"num_attention_heads": 16, "head_dim": 256}, (28, 3072, 24576)),
    "mistral-7b": ("MistralConfig", {"num_attention_heads": 32, "num_key_value_heads": 8}, (32, 4096, 14336)),
    "phi-3-mini": ("Phi3Config", {"num_attention_heads": 32}, (32, 3072, 8192)),
}


def meta_model(config_name: str, extra: dict, sizes: tuple[int, int, int]):
    import transformers

    layers, hidden, intermediate = sizes
    config = getattr(transformers, config_name)(
        num_hidden_layers=layers, hidden_size=hidden, intermediate_size=intermediate, **extra
    )
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return SimpleNamespace(model=model, family=get_family("causal_lm"))


@pytest.mark.parametrize("name", FULL_SIZE_TEXT_MODELS)
def test_full_size_text_model_sites_resolve(name):
    config_name, extra, (layers, hidden, intermediate) = FULL_SIZE_TEXT_MODELS[name]
    target = meta_model(config_name, extra, (layers, hidden, intermediate))
    shapes = {"lm.down_proj": hidden, "lm.o_proj": hidden, "lm.mlp_hidden": intermediate}
    if name != "phi-3-mini":
        shapes |= {"lm.gate_proj": intermediate, "lm.up_proj": intermediate}
    for site_name, width in shapes.items():
        site = resolve_site(target, site_name)
        assert (site.n_layers, site.width) == (layers, width), site_name
        assert site_size(site_name, target.model.config, target.family) == layers * width
        assert all(module.weight.device.type == "meta" for module in site.modules)


def test_phi3_fused_gate_up_projection_is_named_when_a_site_asks_for_gate_proj():
    target = meta_model(*FULL_SIZE_TEXT_MODELS["phi-3-mini"][:2], (2, 64, 128))
    with pytest.raises(SiteResolutionError, match=r"no Linear at 'mlp.gate_proj'.*its mlp has: gate_up_proj"):
        resolve_site(target, "lm.gate_proj")


# -- the plugin's text cases ----------------------------------------------------------------------------------
CASES = Path(__file__).resolve().parents[1] / "cases" / "test_text_lm.py"


@pytest.fixture(scope="module", autouse=True)
def modules_imported_before_pytester(text_session):
    """pytester's in-process runs drop modules first imported during the run: load the text models first."""
    for name in TEXT_MODELS:
        text_session.experiment(name)


def run_text_cases(pytester, cache_dir, *args):
    pytester.makepyfile(test_text_cases=CASES.read_text())
    common = ("-p", "no:cacheprovider", "--can-cache-dir", str(cache_dir), "--can-device", "cpu")
    common += ("--can-report-dir", str(pytester.path / "reports"), "--can-max-new-tokens", "6", "--can-k-max", "2")
    return pytester.runpytest(*common, "--can-noise-samples", "2", *args)


def test_text_cases_run_offline_and_appear_in_the_summary(pytester, cache_dir):
    result = run_text_cases(pytester, cache_dir, "-k", "tiny-llama and down_proj", "--can-text-window", "64")
    result.assert_outcomes(passed=2 * 3)  # two rankings × k = 0, 1, 2
    text = "\n".join(result.outlines)
    rows = [line for line in result.outlines if line.startswith("| tiny-llama")]
    assert len(rows) == 2, text
    header = next(line for line in result.outlines if line.startswith("| model"))
    assert [cell.strip() for cell in header.strip("|").split("|")][4:7] == ["n", "PPL₀", "k₁ stage 1"]  # no CLIP
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1] == "lm.down_proj" and cells[3] == "paragraph"
        assert cells[4] == "3"  # 178 tokens in windows of 64
    assert {"PCICN, max over all positions, σ=5, K=2, seed=0", "CAN, α=1, mean over all positions"} <= {
        [c.strip() for c in row.strip("|").split("|")][2] for row in rows
    }


def test_text_files_become_categories_and_a_bad_one_stops_the_run(pytester, cache_dir, tmp_path):
    story = tmp_path / "story.txt"
    story.write_text(BUILTIN_PARAGRAPH[:300])
    result = run_text_cases(
        pytester, cache_dir, "-k", "tiny-qwen2 and down_proj and can", "--can-texts", str(story), "-q"
    )
    result.assert_outcomes(passed=3)
    assert any(line.startswith("| tiny-qwen2") and "| story " in line for line in result.outlines)
    result = run_text_cases(pytester, cache_dir, "--can-texts", str(tmp_path / "absent.txt"))
    assert result.ret != 0
    assert "absent.txt: no such file" in "\n".join(result.outlines + result.errlines)


def test_a_searched_text_curve_is_tabulated_and_drawn_without_clip(text_session, tmp_path):
    """The threshold table and the plot of a text-only curve: no CLIP columns (its metrics have none), the plot's
    panels are the PPL and the degenerate rate."""
    from harness.reporting.plots import plot_analysis
    from harness.reporting.report import render_thresholds
    from harness.runner.analysis import analyse_curve

    experiment = text_session.experiment("tiny-llama")
    row = analyse_curve(experiment.with_settings(k_max=8, control_seeds=1), "lm.down_proj", TEXT).to_row()
    assert "clip" not in row["baselines"] and row["baseline_chance"] == {}
    table = render_thresholds([row])
    header = [cell.strip() for cell in table.splitlines()[0].strip("|").split("|")]
    cells = [cell.strip() for cell in table.splitlines()[2].strip("|").split("|")]
    assert cells[:3] == ["tiny-llama", "lm.down_proj", TEXT] and header[3:5] == ["PPL₀", "k₁"]
    assert not [title for title in header if "CLIP" in title or "chance" in title]
    path = plot_analysis(row, tmp_path / "curve.png")
    assert path.stat().st_size > 0


def test_controls_measured_together_equal_each_measured_alone(text_experiment):
    """A text model's controls in one batched pass (continuations and the text's NLL under per-row masks) equal
    each control measured alone, up to float rounding."""
    from harness.science.ablation import Intervention

    interventions = [Intervention(selection="random", seed=seed) for seed in range(3)] + [Intervention()]
    together = text_experiment.measure_many("lm.down_proj", TEXT, [(4, i) for i in interventions])
    for point, intervention in zip(together, interventions, strict=True):
        alone = text_experiment.measure("lm.down_proj", TEXT, 4, intervention)
        assert point.captions == alone.captions and point.stage == alone.stage
        assert point.log10_ppl_ratio == pytest.approx(alone.log10_ppl_ratio, abs=1e-5)
        assert point.metrics["degenerate_rate"] == alone.metrics["degenerate_rate"]


def test_a_text_search_generates_only_where_the_tables_look(text_experiment, monkeypatch):
    """Under PCICN's criterion a text model's stage reads the PPL alone, so the search's points are one forward
    each; k₁ and k₂ (which the tables and failure messages show) and the controls get their continuations. The
    stages are those of the same search generating at every k."""
    import dataclasses

    from harness.runner.analysis import analyse_curve
    from harness.science.threshold_search import search_thresholds

    analysis = analyse_curve(text_experiment.with_settings(k_max=64, control_seeds=1), "lm.down_proj", TEXT)
    shown = {0, analysis.search.k1, analysis.search.k2} - {None}
    for k, point in analysis.points.items():
        assert point.generated == (k in shown), k
        assert bool(point.captions) == (k in shown)
    generating = lambda ks: [  # noqa: E731
        text_experiment.measure("lm.down_proj", TEXT, k).stage for k in ks
    ]
    everywhere = search_thresholds("adaptive", generating, 64, analysis.search.parallel)
    assert everywhere.stages == analysis.search.stages
    strict = dataclasses.replace(text_experiment.settings.thresholds, text_stage2="ppl+degenerate")
    reading = text_experiment.with_settings(thresholds=strict)
    assert reading.measure("lm.down_proj", TEXT, 4, stage_only=True).generated  # its stage reads them
