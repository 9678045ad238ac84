"""Scaling up (part 9): memory formulas against measured bytes, activation checkpointing gives the
plain gradients, MoE routing properties, and FSDP2 on two CPU processes (a two-"node" torchrun
rendezvous, bounded in time) against one process."""

import json

import pytest, torch
from safetensors.torch import load_file

from bigmodel_book.data.core import DataLoaders
from bigmodel_book.scale.fsdp import (
    FSDPConfig,
    ShardedCheckpoint,
    launch_fsdp,
    shard_gpt,
    train_fsdp,
)
from bigmodel_book.scale.memory import (
    ActivationCheckpointing,
    SavedTensors,
    gpt_activation_bytes,
    gpt_param_count,
    set_checkpointing,
    state_bytes,
    state_bytes_per_param,
)
from bigmodel_book.scale.moe import (
    LoadBalancing,
    MoEFeedForward,
    active_params,
    dense_gpt,
    expert_load,
    moe_gpt,
    moe_loop_reference,
)
from bigmodel_book.sequence.charlm import lm_loss
from bigmodel_book.text.gpt import GPT, RandomWindows
from bigmodel_book.train.learner import Learner

V, T, D, H, L, B = 20, 16, 16, 2, 2, 3


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)


@pytest.mark.parametrize('checkpointing', [False, True])
def test_activation_formula_matches_saved_tensors(checkpointing):
    torch.manual_seed(0)
    model = set_checkpointing(GPT(V, T, D, H, L, dropout=0.0), checkpointing)
    x, y = _batch()
    with SavedTensors(model.parameters()) as saved:
        loss = lm_loss(model(x), y)
    assert saved.nbytes == gpt_activation_bytes(B, T, D, L, H, V, checkpointing)['total']
    loss.backward()
    opt = torch.optim.AdamW(model.parameters())
    opt.step()
    n = gpt_param_count(V, T, D, L)
    assert n == sum(p.numel() for p in model.parameters())
    measured, per = state_bytes(model, opt), state_bytes_per_param('fp32')
    assert measured['params'] == per['params'] * n and measured['grads'] == per['grads'] * n
    n_tensors = len(list(model.parameters()))
    assert measured['optimizer'] == per['optimizer'] * n + 4 * n_tensors  # AdamW step counters


def test_zero_stages_divide_the_right_terms():
    for prec in ('fp32', 'bf16', 'mixed'):
        full = state_bytes_per_param(prec)
        z1, z2, z3 = (state_bytes_per_param(prec, s, 4) for s in (1, 2, 3))
        assert z1['optimizer'] == full['optimizer'] / 4 and z1['grads'] == full['grads']
        assert z2['grads'] == full['grads'] / 4 and z2['params'] == full['params']
        assert z3['total'] == pytest.approx(full['total'] / 4)
    assert state_bytes_per_param('mixed')['total'] == 16


def test_checkpointed_gradients_equal_plain_ones_with_dropout():
    torch.manual_seed(0)
    model = GPT(V, T, D, H, L, dropout=0.2)
    x, y = _batch()
    grads = []
    for on in (False, True):
        set_checkpointing(model, on)
        model.zero_grad()
        torch.manual_seed(1)
        lm_loss(model(x), y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    set_checkpointing(model, False)
    assert not any('forward' in b.__dict__ for b in model.blocks)


def test_checkpointing_callback_trains_like_plain_and_cleans_up():
    ids = torch.randint(0, V, (400,), generator=torch.Generator().manual_seed(0))
    losses = []
    for cbs in ([], [ActivationCheckpointing()]):
        torch.manual_seed(0)
        dls = DataLoaders.from_datasets(RandomWindows(ids, T, 24), bs=8, device='cpu')
        learn = Learner(GPT(V, T, D, H, L, dropout=0.1), dls, lm_loss, cbs=cbs, quiet=True)
        learn.fit(1, lr=1e-3)
        losses.append(learn.recorder.losses)
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    assert not any('forward' in b.__dict__ for b in learn.model.blocks)


def test_memory_bad_input():
    with pytest.raises(ValueError, match='blocks'):
        set_checkpointing(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match='precision'):
        state_bytes_per_param('fp8')
    with pytest.raises(ValueError, match='zero_stage'):
        state_bytes_per_param('fp32', 5)
    with pytest.raises(ValueError, match='n_devices'):
        state_bytes_per_param('fp32', 1, 0)
    with pytest.raises(ValueError, match='divisible'):
        gpt_activation_bytes(2, 8, 10, 1, 4, 20)


@pytest.mark.parametrize('k,cap', [(1, 1.25), (1, 0.5), (2, 1.0), (2, None)])
def test_moe_matches_the_loop_and_respects_capacity(k, cap):
    torch.manual_seed(0)
    moe = MoEFeedForward(8, n_experts=4, k=k, d_ff=16, capacity_factor=cap)
    x = torch.randn(2, 13, 8)
    y = moe(x)
    assert y.shape == x.shape
    assert torch.allclose(y, moe_loop_reference(moe, x), atol=1e-5)
    _, gates, top_e, keep = moe.route(x.reshape(-1, 8))
    assert (torch.bincount(top_e[keep], minlength=4) <= moe.capacity(26)).all()
    if k > 1:  # renormalised over the chosen experts; with k=1 the gate is the probability
        assert torch.allclose(gates.sum(-1), torch.ones(26))
    assert moe.load.sum() == pytest.approx(1.0)
    if cap is None:
        assert moe.dropped == 0.0


def test_aux_loss_is_one_when_balanced_and_near_e_when_collapsed():
    moe = MoEFeedForward(4, n_experts=4, k=1)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(4) * 1e-4)
    moe(torch.eye(4).repeat(5, 1))
    assert moe.aux_loss.item() == pytest.approx(1.0, abs=1e-3)
    assert torch.allclose(moe.load, torch.full((4,), 0.25))
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[2] = 30.0
    moe(torch.rand(20, 4) + 0.1)
    assert moe.aux_loss.item() > 3.9 and moe.load[2] == 1.0
    # random routers: never below the balanced value by more than rounding
    for s in range(5):
        torch.manual_seed(s)
        m = MoEFeedForward(8, n_experts=4, k=2)
        m(torch.randn(64, 8))
        assert m.aux_loss.item() >= 0.99


def test_moe_gpt_parameters_and_balancing_callback():
    moe = moe_gpt(V, T, D, H, L, 4, 1, 1.25, 0.0, 2 * D)
    dense = dense_gpt(V, T, D, H, L, 2 * D, 0.0)
    assert active_params(moe) - active_params(dense) == 4 * D * L  # the routers
    x, y = _batch()
    ids = torch.randint(0, V, (300,), generator=torch.Generator().manual_seed(0))
    dls = DataLoaders.from_datasets(RandomWindows(ids, T, 8), bs=8, device='cpu')
    learn = Learner(moe, dls, lm_loss, cbs=[LoadBalancing(0.5)], quiet=True)
    learn.fit(1, lr=1e-3)
    load, dropped = expert_load(moe, x)
    assert load.shape == (L, 4) and torch.allclose(load.sum(1), torch.ones(L)) and 0 <= dropped < 1


def test_moe_bad_input():
    with pytest.raises(ValueError, match='k <= n_experts'):
        MoEFeedForward(8, n_experts=2, k=3)
    with pytest.raises(ValueError, match='capacity_factor'):
        MoEFeedForward(8, capacity_factor=-1)
    with pytest.raises(ValueError, match='width 8'):
        MoEFeedForward(8)(torch.randn(3, 5))
    with pytest.raises(ValueError, match='alpha'):
        LoadBalancing(-0.1)
    with pytest.raises(ValueError, match='MoEFeedForward'):
        expert_load(dense_gpt(V, T, D, H, L), _batch()[0])


def test_fsdp_bad_input(tmp_path):
    with pytest.raises(RuntimeError, match='process group'):
        shard_gpt(GPT(V, T, D, H, L))
    with pytest.raises(ValueError, match='mode'):
        train_fsdp(FSDPConfig(mode='zero9'))
    with pytest.raises(ValueError, match='nproc'):
        launch_fsdp(FSDPConfig(), nproc=0)
    with pytest.raises(FileNotFoundError, match='progress.json'):
        ShardedCheckpoint(tmp_path, resume_from=tmp_path)


TINY = dict(epochs=2, train_size=6000, d_model=16, n_layers=1, n_heads=2, block_size=16, bs=8,
            lr=3e-3, seed=0, device='cpu', quiet=True)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_fsdp_two_nodes_shard_and_match_one_process(tmp_path):
    _, single = train_fsdp(FSDPConfig(**TINY, out=tmp_path / 'single'))
    launch_fsdp(FSDPConfig(**TINY, out=tmp_path / 'fsdp'), nproc=1, nnodes=2, timeout=360)
    fsdp = json.loads((tmp_path / 'fsdp' / 'metrics.json').read_text())
    assert fsdp['world_size'] == 2 and fsdp['backend'] == 'gloo'
    full, ranks = single['per_rank_bytes'][0], fsdp['per_rank_bytes']
    assert sum(r['params'] for r in ranks) == full['params']
    assert all(0.4 <= r['params'] / full['params'] <= 0.6 for r in ranks)
    assert max(abs(a - b) for a, b in zip(single['losses'], fsdp['losses'])) < 1e-4
    w1, w2 = (load_file(str(tmp_path / n / 'model.safetensors')) for n in ('single', 'fsdp'))
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-2
    assert (tmp_path / 'fsdp' / 'sharded' / 'epoch_1' / '.metadata').exists()


@pytest.mark.gpu
@pytest.mark.timeout(300)
def test_fsdp_nccl(tmp_path):
    n = torch.cuda.device_count()
    launch_fsdp(FSDPConfig(**{**TINY, 'device': 'cuda', 'bs': 8 * n}, out=tmp_path), nproc=n)
    m = json.loads((tmp_path / 'metrics.json').read_text())
    assert m['backend'] == ('nccl' if n > 1 else 'none') and len(m['losses']) > 0


SCALE_CLI = ['--train-size', '3000', '--d-model', '16', '--block-size', '16', '--bs', '8',
             '--epochs', '2', '--experts', '2', '--checkpointing', '--device', 'cpu', '--quiet']


def test_cli_trains_moe_with_checkpointing_and_resumes(tmp_path, capsys):
    from bigmodel_book.cli.commands import train_scale_main

    whole = train_scale_main([*SCALE_CLI, '--out', str(tmp_path / 'whole')])
    half = train_scale_main([*SCALE_CLI, '--out', str(tmp_path / 'half'), '--stop-after', '1'])
    assert whole['epochs_run'] == 2 and half['epochs_run'] == 1 and not half['resumed_from']
    resumed = train_scale_main([*SCALE_CLI, '--out', str(tmp_path / 'half')])
    assert resumed['resumed_from'].endswith('epoch_0') and resumed['epochs_run'] == 2
    assert resumed['final']['train_loss'] == pytest.approx(whole['final']['train_loss'], abs=1e-6)
    with pytest.raises(SystemExit):
        train_scale_main([*SCALE_CLI, '--top-k', '3', '--out', str(tmp_path / 'bad')])
    assert '--top-k must be between 1 and --experts' in capsys.readouterr().err


def test_cli_under_torchrun_shards_the_moe_model(tmp_path):
    from bigmodel_book.lifecycle.distributed import launch

    r = launch([*SCALE_CLI, '--epochs', '1', '--out', str(tmp_path / 'run')], nproc=2,
               timeout=300, task='scale')
    m = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    assert m['world_size'] == 2 and m['mode'] == 'fsdp' and r.stdout.count('"world_size"') == 1
    one, two = (sum(b.values()) for b in m['per_rank_bytes'])
    assert abs(one - two) / one < 0.05  # each rank holds about half: equal shares


@pytest.mark.gpu
def test_bf16_checkpointing_saves_cuda_memory_and_keeps_the_loss():
    torch.manual_seed(0)
    model = GPT(80, 256, 256, 4, 4, dropout=0.0).cuda()
    x = torch.randint(0, 80, (8, 256), device='cuda')

    def step(on: bool) -> tuple[float, int]:
        set_checkpointing(model, on)
        model.zero_grad(set_to_none=True)
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast('cuda', dtype=torch.bfloat16):
            loss = lm_loss(model(x), x.roll(-1, 1))
        loss.backward()
        return loss.item(), torch.cuda.max_memory_allocated()

    (plain, plain_mem), (ckpt, ckpt_mem) = step(False), step(True)
    assert abs(plain - ckpt) < 1e-2 and ckpt_mem < 0.8 * plain_mem, (plain_mem, ckpt_mem)
