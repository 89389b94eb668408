"""train.py's SFT mode: the loss of an iteration is the mean over all its response tokens, whatever
the micro-batching (gradient accumulation, DDP ranks); a mean of micro-batch means would weigh a
token by how many response tokens share its micro-batch."""
import csv
import json
import os
import sys

import pytest
import torch

from common import GPT2Tokenizer, sft_batch, tokenize_pair
from conftest import ROOT, make_hf_gpt2, run_python
from model import GPT

RECORDS = [{'prompt': 'Q: say yes\nA:', 'response': ' yes'},
           {'prompt': 'Q: count\nA:', 'response': ' one two three four five six seven eight nine ten eleven twelve'}]


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp('sft_accumulation')
    make_hf_gpt2(str(d / 'hf'), vocab_size=50257, n_positions=64, n_embd=32)
    (d / 'sft.jsonl').write_text('\n'.join(json.dumps(r) for r in RECORDS))
    return d


def train_one_step(d, out, batch_size, accumulation, nproc=1):
    args = ['--backend=gloo'] * (nproc > 1) + ['--device=cpu', '--compile=False', f'--init_from={d / "hf"}', f'--sft_data={d / "sft.jsonl"}',
            f'--sft_val_data={d / "sft.jsonl"}', '--block_size=32', f'--batch_size={batch_size}',
            f'--gradient_accumulation_steps={accumulation}', '--max_iters=1', '--eval_interval=1', '--eval_iters=2',
            '--learning_rate=1e-3', '--warmup_iters=0', '--decay_lr=False', f'--out_dir={d / out}']
    if nproc > 1:
        from test_ddp import launch
        launch('train.py', args, d, nproc)
    else:
        p = run_python([sys.executable, os.path.join(ROOT, 'train.py'), *args], cwd=d, capture_output=True,
                       text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
    rows = list(csv.DictReader(open(d / out / 'log.csv')))
    loss = [float(r['train/loss_step']) for r in rows if r['train/loss_step']]
    val0 = [float(r['val/loss']) for r in rows if r['val/loss'] and r['step'] == '0']  # before the update
    return loss[0], val0[0], torch.load(d / out / 'ckpt.pt', weights_only=False)['model']


def test_accumulated_sft_step_equals_the_one_batch_step(setup):
    """The same two examples (2 and 13 response targets) as one micro-batch of 2, or as 2
    micro-batches of 1 accumulated, must give the same loss (the mean NLL over the iteration's
    response tokens, computed here directly) and the same update. Before the fix the accumulated run
    logged (l1 + l2) / 2, the mean of the two examples' means (2.0x the short example's per-token
    weight), and its weights after the step differed."""
    tok = GPT2Tokenizer()
    examples = [tokenize_pair(tok.encode(r['prompt']), tok.encode(r['response']), tok.eot_token, 32, 'left')
                for r in RECORDS]
    model = GPT.from_pretrained(str(setup / 'hf'), block_size=32).eval()
    X, Y = sft_batch(examples, tok.eot_token, 'cpu')
    with torch.no_grad():
        expected = model(X, Y)[1].item()  # token mean over both examples' response + EOS targets
        per_example = [model(*sft_batch([e], tok.eot_token, 'cpu'))[1].item() for e in examples]
    assert abs(expected - sum(per_example) / 2) > 1e-2  # the two averages differ on this data
    loss_1x2, val_1x2, w_1x2 = train_one_step(setup, 'b2a1', batch_size=2, accumulation=1)
    loss_2x1, val_2x1, w_2x1 = train_one_step(setup, 'b1a2', batch_size=1, accumulation=2)
    loss_ddp, _, w_ddp = train_one_step(setup, 'ddp', batch_size=1, accumulation=2, nproc=2)  # one example per rank
    # the eval too (the same records as val data): one batch of 2, or 2 batches of 1, give the token mean
    assert val_1x2 == pytest.approx(expected, abs=1e-5) and val_2x1 == pytest.approx(expected, abs=1e-5)
    assert loss_1x2 == pytest.approx(expected, abs=1e-5)
    assert loss_2x1 == pytest.approx(expected, abs=1e-5)
    assert loss_ddp == pytest.approx(expected, abs=1e-5)
    # AdamW's first step is ~ lr * sign(grad): the same gradient up to summation order gives the same
    # weights except where a gradient is ~0 (a 1e-5 difference); a differently weighted one flips signs (2 lr)
    for k in w_1x2:
        torch.testing.assert_close(w_2x1[k], w_1x2[k], atol=1e-4, rtol=0)
        torch.testing.assert_close(w_ddp[k], w_1x2[k], atol=1e-4, rtol=0)
