"""Post-training a language model (6.7): the response-only loss mask, LoRA's identity start, merge
and agreement with peft, and clear errors for bad input. Tiny models, no data set: seconds."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigmodel_book.text.instruct import (
    IGNORE,
    LoRALinear,
    add_lora,
    choice_logprobs,
    encode_example,
    merge_lora,
    pad_batch,
    peft_copy,
    response_loss,
    sequence_logprob,
    trainable_params,
)


def test_special_tokens_never_come_from_text(tok):
    ids = tok.encode('<|user|> hi <|end|>')
    assert max(ids) < tok.bpe.vocab_size
    chat, n_prompt = tok.chat('hi', 'yes')
    assert chat[0] == tok.user and chat[n_prompt - 1] == tok.assistant and chat[-1] == tok.end
    assert tok.decode(chat) == '<|user|>hi<|assistant|>yes<|end|>'


def test_mask_keeps_exactly_the_response(tok):
    ids, n_prompt = tok.chat('is it soft?', 'yes, lovely')
    x, y = encode_example(tok, 'is it soft?', 'yes, lovely', block_size=32)
    assert torch.equal(x, torch.tensor(ids[:-1]))
    kept = (y != IGNORE).nonzero().flatten()
    assert kept.tolist() == list(range(n_prompt - 1, len(ids) - 1))
    assert y[kept].tolist() == ids[n_prompt:]


def test_crop_and_too_long_prompt(tok):
    x, y = encode_example(tok, 'hi', 'dress ' * 40, block_size=16)
    assert len(x) == len(y) == 16
    with pytest.raises(ValueError, match='no room'):
        encode_example(tok, 'dress ' * 40, 'yes', block_size=16)


def test_response_loss_matches_cross_entropy(tok):
    pairs = [encode_example(tok, 'a', 'yes', 32), encode_example(tok, 'b', 'a soft dress', 32)]
    X, Y = pad_batch(pairs)
    logits = torch.randn(*X.shape, tok.vocab_size)
    ref = F.cross_entropy(logits.flatten(0, 1), Y.flatten(), ignore_index=IGNORE)
    assert torch.allclose(response_loss(logits, Y, per='token'), ref, atol=1e-6)
    rows = [response_loss(logits[i : i + 1], Y[i : i + 1]) for i in range(2)]
    assert torch.allclose(response_loss(logits, Y), torch.stack(rows).mean(), atol=1e-6)
    per_row = -sequence_logprob(lambda _: logits, X, Y) / (Y != IGNORE).sum(1)
    assert torch.allclose(per_row, torch.stack(rows), atol=1e-5)


@pytest.mark.parametrize(
    'logits, target, match',
    [
        (torch.randn(2, 5, 7), torch.zeros(2, 4, dtype=torch.long), 'needs logits'),
        (torch.randn(2, 5), torch.zeros(2, 5, dtype=torch.long), 'needs logits'),
        (torch.randn(2, 5, 7), torch.full((2, 5), IGNORE), 'no response tokens'),
        (torch.randn(0, 5, 7), torch.zeros(0, 5, dtype=torch.long), 'no response tokens'),
    ],
)
def test_response_loss_refuses_bad_input(logits, target, match):
    with pytest.raises(ValueError, match=match):
        response_loss(logits, target)


def test_bad_inputs_elsewhere(tok, gpt):
    with pytest.raises(ValueError, match='empty batch'):
        pad_batch([])
    with pytest.raises(ValueError, match='per must be'):
        response_loss(torch.randn(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), per='batch')
    with pytest.raises(ValueError, match='no nn.Linear'):
        add_lora(copy.deepcopy(gpt), ('nothing',))
    with pytest.raises(ValueError, match='rank r'):
        LoRALinear(nn.Linear(4, 4), r=5)
    with pytest.raises(ValueError, match='wraps an nn.Linear'):
        LoRALinear(nn.Conv1d(4, 4, 1))
    with pytest.raises(ValueError, match='non-empty choices'):
        choice_logprobs(gpt, [[1, 2]], [[]])


def test_lora_starts_as_identity_and_trains_few(gpt):
    lora = add_lora(copy.deepcopy(gpt), ('attn.qkv', 'attn.proj'), r=2, alpha=4)
    ids = torch.randint(0, 200, (3, 12))
    with torch.no_grad():
        assert torch.equal(lora(ids), gpt(ids))
    n = sum(m.A.numel() + m.B.numel() for m in lora.modules() if isinstance(m, LoRALinear))
    assert trainable_params(lora) == n == 2 * 2 * ((16 + 48) + (16 + 16))


def _perturbed(gpt):
    lora = add_lora(copy.deepcopy(gpt), ('attn.qkv', 'attn.proj'), r=2, alpha=4).eval()
    with torch.no_grad():
        for m in lora.modules():
            if isinstance(m, LoRALinear):
                m.B.normal_(0, 0.1)
    return lora


def test_merge_equals_unmerged(gpt):
    lora = _perturbed(gpt)
    ids = torch.randint(0, 200, (3, 12))
    merged = merge_lora(lora)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    with torch.no_grad():
        out = lora(ids)
        assert not torch.allclose(out, gpt(ids), atol=1e-4)  # the update does something
        assert torch.allclose(merged(ids), out, atol=1e-5)
    assert any(isinstance(m, LoRALinear) for m in lora.modules())  # merge_lora copies


def test_lora_gradients_reach_only_adapters(gpt):
    lora = _perturbed(gpt).train()
    ids = torch.randint(0, 200, (2, 8))
    lora(ids).sum().backward()
    grads = {n for n, p in lora.named_parameters() if p.grad is not None}
    assert grads and all(n.endswith('.A') or n.endswith('.B') for n in grads)


def test_agrees_with_peft(gpt):
    pytest.importorskip('peft')
    lora = _perturbed(gpt)
    ids = torch.randint(0, 200, (3, 12))
    with torch.no_grad():
        assert torch.allclose(peft_copy(lora)(ids), lora(ids), atol=1e-5)
    with pytest.raises(ValueError, match='LoRALinear'):
        peft_copy(gpt)
