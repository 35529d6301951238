"""VertiportGNNPolicy: shapes, masks, distribution math, batching, gradients, devices, and the rollout adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import agentgym
from environments.vertiport.env import VertiportEnv
from environments.vertiport.fleet import BOARDED, FLYING
from policies.gnn.vertiport import VertiportGNNPolicy
from policies.neural import NeuralActor


def observations(preset="small", steps=(0, 3, 6), seed=0, obs_mode="dict"):
    """Observations of one day under the greedy oracle at the given step numbers (some aircraft in flight)."""
    env = VertiportEnv(preset=preset, obs_mode=obs_mode)
    obs, _ = env.reset(seed=seed)
    out = []
    for step in range(max(steps) + 1):
        if step in steps:
            out.append(obs)
        obs, *_ = env.step(env.oracle_action())
    return env, out


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    env, obs = observations()
    policy = VertiportGNNPolicy.make(env, hidden=32, layers=2, heads=4)
    return env, obs, policy


def test_output_shapes_masks_and_active(setup):
    env, obs, policy = setup
    out = policy(obs)
    n, m = env.num_vertiports, env.num_aircraft
    assert out.logits.shape == (3, m, n) and out.mask.shape == (3, m, n) and out.active.shape == (3, m)
    assert out.value.shape == (3,) and policy.has_value
    for i, o in enumerate(obs):
        assert out.mask[i].tolist() == o["struct"]["action_mask"].astype(bool).tolist()
        assert out.active[i].tolist() == o["struct"]["deciding"].astype(bool).tolist()
    assert torch.isfinite(out.logits).all() and out.logits.abs().max() <= policy.clip


def test_sampling_respects_the_mask(setup):
    _, obs, policy = setup
    out = policy(obs)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        choices = out.sample(gen)
        allowed = out.mask.gather(-1, choices.unsqueeze(-1)).squeeze(-1)
        assert allowed.all()  # every slot (active ones sample; inactive ones have a single allowed entry)
    greedy = out.sample(greedy=True)
    assert out.mask.gather(-1, greedy.unsqueeze(-1)).all()


def test_log_prob_and_entropy_match_categorical(setup):
    _, obs, policy = setup
    out = policy(obs)
    choices = out.sample(torch.Generator().manual_seed(1))
    # Each aircraft's distribution is conditioned on the choices of the deciding aircraft before it.
    masked = out.condition(choices).masked_fill(~out.mask, float("-inf"))
    dist = torch.distributions.Categorical(logits=masked)
    active = out.active.float()
    expected_logp = (dist.log_prob(choices) * active).sum(-1)
    probs = dist.probs
    entropy = -(probs * torch.where(out.mask, probs.clamp_min(1e-30).log(), 0.0)).sum(-1)
    assert torch.allclose(out.log_prob(choices), expected_logp, atol=1e-5)
    assert torch.allclose(out.entropy(choices), (entropy * active).sum(-1), atol=1e-5)


def test_decoder_is_autoregressive_over_aircraft(setup):
    _, obs, policy = setup
    policy.eval()
    with torch.no_grad():
        out = policy(obs)
        choices = out.sample(torch.Generator().manual_seed(3))
        full = out.condition(choices)
        order, active = out.order, out.active
        # Round r holds the r-th deciding aircraft of each vertiport.
        for b, o in enumerate(obs):
            loc, deciding = o["struct"]["aircraft_location"], o["struct"]["deciding"].astype(bool)
            for i in np.flatnonzero(deciding):
                assert order[b, i] == int((deciding[:i] & (loc[:i] == loc[i])).sum())
        for r in range(int(order[active].max()) + 1):
            now = active & (order == r)
            # A round's scores ignore the choices of its own and later rounds ...
            later = torch.where(order >= r, torch.zeros_like(choices), choices)
            assert torch.allclose(out.condition(later)[now], full[now], atol=1e-6)
        # ... and the first round's are the unconditioned ones.
        first = active & (order == 0)
        assert torch.allclose(full[first], out.logits[first], atol=1e-6)
        # A later aircraft at the same vertiport sees an earlier one's flight where passengers wait.
        struct = obs[0]["struct"]
        loc, deciding = struct["aircraft_location"], struct["deciding"].astype(bool)
        waiting = struct["routes"][..., 7]
        pairs = [
            (i, j, int(u))
            for j in range(len(loc))
            for i in range(j)
            if deciding[i] and deciding[j] and loc[i] == loc[j]
            for u in np.flatnonzero(waiting[loc[i]] > 0)
            if struct["action_mask"][i, u]
        ]
        assert pairs, "the fixture needs two deciding aircraft at one vertiport with passengers waiting"
        i, j, u = pairs[0]
        stay, fly = choices[:1].clone(), choices[:1].clone()
        stay[0, i], fly[0, i] = int(loc[i]), u
        assert not torch.allclose(out.condition(stay)[0, j, u], out.condition(fly)[0, j, u])
    policy.train()


def test_batched_forward_equals_one_by_one(setup):
    _, obs, policy = setup
    policy.eval()
    with torch.no_grad():
        batched = policy(obs)
        for i, o in enumerate(obs):
            single = policy([o])
            assert torch.allclose(batched.logits[i], single.logits[0], atol=1e-5)
            assert torch.allclose(batched.value[i], single.value[0], atol=1e-5)
    policy.train()


def test_struct_mode_and_graph_inputs_agree(setup):
    env, obs, policy = setup
    _, struct_obs = observations(obs_mode="struct")
    policy.eval()
    with torch.no_grad():
        a = policy(obs).logits
        b = policy(struct_obs).logits
        env.reset(seed=0)
        c = policy([env.graph_observation()]).logits
    policy.train()
    assert torch.allclose(a, b) and torch.allclose(a[0], c[0], atol=1e-6)


def test_graph_inputs_batch_like_struct_inputs(setup):
    """The direct struct batching and torch_geometric's Batch of the same graphs give the same tensors and outputs."""
    from torch_geometric.data import Batch

    from environments.vertiport.graph import struct_arrays, struct_to_heterodata
    from policies.gnn.vertiport import _Graphs

    _, obs, policy = setup
    structs = [o["struct"] for o in obs]
    direct = _Graphs.from_arrays([struct_arrays(s) for s in structs])
    via_pyg = _Graphs.from_batch(Batch.from_data_list([struct_to_heterodata(s) for s in structs]))
    for name, value in vars(direct).items():
        other = getattr(via_pyg, name)
        if isinstance(value, dict):
            assert value.keys() == other.keys() and all(torch.equal(value[k], other[k]) for k in value), name
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, other.reshape(value.shape)), name
    policy.eval()
    with torch.no_grad():
        a, b = policy(obs), policy([struct_to_heterodata(s) for s in structs])
    policy.train()
    assert torch.allclose(a.logits, b.logits, atol=1e-6) and torch.allclose(a.value, b.value, atol=1e-6)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.active, b.active) and torch.equal(a.order, b.order)


def test_window_encoder_is_the_transformer_layer(setup):
    """The written-out window encoder computes torch's TransformerEncoderLayer, with the same gradients."""
    _, _, policy = setup
    window = torch.rand(17, policy.window, 2)
    for training in (True, False):
        policy.train(training)
        reference = policy.window_encoder(policy.window_in(window) + policy.window_pos)
        assert torch.allclose(policy.encode_window(window), reference, atol=1e-5)
    policy.train()
    grads = []
    for encode in (policy.encode_window, lambda w: policy.window_encoder(policy.window_in(w) + policy.window_pos)):
        policy.zero_grad()
        encode(window).pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 15  # window_in, window_pos and the layer
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-5) for n in grads[0])
    policy.zero_grad()


def test_decide_is_sample_with_its_teacher_forced_log_prob(setup):
    """One decoding pass gives the choices and exactly the log-prob that re-scoring them gives."""
    _, obs, policy = setup
    policy.eval()
    with torch.no_grad():
        out = policy(obs)
        for seed in range(3):
            choices, logp = out.decide(torch.Generator().manual_seed(seed))
            assert out.mask.gather(-1, choices.unsqueeze(-1)).all()
            assert torch.allclose(logp, out.log_prob(choices), atol=1e-5)
            # Rows-only scoring (what a round asks for) equals the full table's rows.
            for r in range(int(out.order[out.active].max()) + 1):
                now = out.active & (out.order == r)
                assert torch.allclose(out.condition(choices, now), out.condition(choices)[now], atol=1e-6)
        greedy, greedy_logp = out.decide(greedy=True)
        assert torch.equal(greedy, out.sample(greedy=True))
        assert torch.allclose(greedy_logp, out.log_prob(greedy), atol=1e-5)
    policy.train()


def _can_compile() -> bool:
    import shutil
    import sysconfig
    from pathlib import Path

    headers = Path(sysconfig.get_paths()["include"], "Python.h").is_file()
    return headers and any(shutil.which(c) for c in ("g++", "c++"))


@pytest.mark.skipif(not _can_compile(), reason="torch.compile on CPU needs a C++ compiler and Python's headers")
def test_compiled_inference_is_the_same_function(setup):
    """compile_inference: the same outputs at other batch and graph sizes; passes with autograd stay eager."""
    env, obs, policy = setup
    _, tiny_obs = observations(preset="tiny", steps=(1, 2))
    compiled = VertiportGNNPolicy.make(env, hidden=32, layers=2, heads=4)
    compiled.load_state_dict(policy.state_dict())
    compiled.eval().compile_inference()
    policy.eval()
    with torch.no_grad():
        for batch in (obs, obs[:1], tiny_obs, [obs[0], tiny_obs[0]]):
            a, b = policy(batch), compiled(batch)
            assert torch.allclose(a.logits, b.logits, atol=1e-5) and torch.allclose(a.value, b.value, atol=1e-5)
        # A deep copy (a trainer's frozen reference model) computes with its own parameters, not the original's.
        import copy

        reference = copy.deepcopy(compiled)
        before = reference(obs).logits
        for p in compiled.parameters():
            p.add_(0.1)
        assert torch.equal(reference(obs).logits, before)
        assert not torch.allclose(compiled(obs).logits, before, atol=1e-3)
    policy.train()
    compiled.train()
    out = compiled(obs)  # grad enabled: the eager network, so every parameter gets a gradient
    (out.log_prob(out.sample(torch.Generator().manual_seed(0))).sum() + out.value.sum()).backward()
    assert all(p.grad is not None for p in compiled.parameters())


def test_mixed_sizes_are_padded(setup):
    _, obs, policy = setup
    tiny_env, tiny_obs = observations(preset="tiny", steps=(1,))
    policy.eval()
    with torch.no_grad():
        mixed = policy([obs[0], tiny_obs[0]])
        alone = policy(tiny_obs)
    policy.train()
    m, n = tiny_env.num_aircraft, tiny_env.num_vertiports
    assert mixed.logits.shape == (2, 8, 4)
    assert torch.allclose(mixed.logits[1, :m, :n], alone.logits[0], atol=1e-5)
    assert not mixed.mask[1, m:].any() and not mixed.mask[1, :, n:].any() and not mixed.active[1, m:].any()


def test_gradients_reach_every_parameter(setup):
    env, obs, policy = setup
    # "to" edges (boarded or flying aircraft) exist, so their convolutions get gradients too.
    assert any((o["struct"]["aircraft"][:, 1 + BOARDED : 1 + FLYING + 1] > 0).any() for o in obs)
    policy.zero_grad()
    out = policy(obs)
    choices = out.sample(torch.Generator().manual_seed(2))
    loss = -out.log_prob(choices).sum() - 0.01 * out.entropy().sum() + out.value.pow(2).sum()
    loss.backward()
    missing = [name for name, p in policy.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_actor_actions_step_the_env():
    env = agentgym.make("vertiport", preset="tiny")
    assert agentgym.spec("vertiport").policy == "policies.gnn.vertiport:VertiportGNNPolicy"
    policy = VertiportGNNPolicy.make(env, hidden=16, layers=1, heads=2)
    actor = NeuralActor(policy)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    done = False
    while not done:
        batch = actor.act([obs], envs=[env], rng=rng)
        action = batch.actions[0]
        assert action in env.action_space and np.isfinite(batch.logprobs).all()
        assert (policy.from_env_action(action) == action).all()
        obs, _, terminated, truncated, info = env.step(action)
        assert info["num_masked"] == 0  # sampled choices respect the mask
        done = terminated or truncated


def test_bad_inputs_raise_clear_errors(setup):
    _, obs, policy = setup
    with pytest.raises(Exception, match="struct view"):
        policy([{"text": "hello"}])
    with pytest.raises(Exception, match="window"):
        VertiportGNNPolicy(window=3)(obs)
    with pytest.raises(Exception, match="divisible"):
        VertiportGNNPolicy(hidden=30, heads=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(setup):
    _, obs, policy = setup
    policy.eval()
    with torch.no_grad():
        cpu = policy(obs)
        gpu_policy = policy.to("cuda")
        gpu = gpu_policy(obs)
    policy.to("cpu").train()
    assert gpu.logits.device.type == "cuda" and gpu.mask.device.type == "cuda"
    assert torch.allclose(cpu.logits, gpu.logits.cpu(), atol=1e-4)
    assert torch.allclose(cpu.value, gpu.value.cpu(), atol=1e-4)
