"""notebooks/autodl.ipynb runs top to bottom in TINY mode (tiny CPU models, the local hh-rlhf file),
executed by nbclient with a python3 kernel in a temporary working directory."""
import os

import pytest

from conftest import ROOT, SHARED

NOTEBOOK = os.path.join(ROOT, 'notebooks', 'autodl.ipynb')


def test_autodl_notebook_runs_in_tiny_mode(tmp_path, monkeypatch):
    nbformat = pytest.importorskip('nbformat')
    nbclient = pytest.importorskip('nbclient')
    pytest.importorskip('ipykernel')
    repo_before = sorted(os.listdir(ROOT)), sorted(os.listdir(os.path.join(ROOT, 'data', 'hh_rlhf')))
    # the kernel inherits this environment: tiny mode, runs in tmp_path, the local hh-rlhf file
    monkeypatch.setenv('NOTEBOOK_TINY', '1')
    monkeypatch.setenv('GPT2_RLHF_REPO', ROOT)
    monkeypatch.setenv('NOTEBOOK_WORKDIR', str(tmp_path))
    monkeypatch.setenv('HH_RLHF_LOCAL', os.path.join(SHARED, 'data', 'hh-rlhf', 'harmless-base-test.jsonl.gz'))
    monkeypatch.setenv('WANDB_MODE', 'offline')
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name='python3', timeout=600,
                                     resources={'metadata': {'path': str(tmp_path)}})
    try:
        client.execute()
    finally:  # the executed notebook, outputs and all, for a look after a failure
        nbformat.write(nb, str(tmp_path / 'executed.ipynb'))
    text = '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
    assert 'TINY=True' in text
    for path in ('data/hh_rlhf/sft_train.jsonl', 'data/hh_rlhf/pref_val.jsonl', 'out-sft-tiny/ckpt.pt',
                 'out-reward-tiny/best.pt', 'out-ppo-tiny/ckpt.pt', 'out-dpo-tiny/ckpt.pt'):
        assert os.path.isfile(tmp_path / path), path
    for run in ('out-sft-tiny', 'out-reward-tiny', 'out-ppo-tiny', 'out-dpo-tiny'):
        assert os.path.getsize(tmp_path / run / 'log.csv') > 0
    assert 'val/accuracy' in text and 'objective/kl' in text and 'rewards/margins' in text  # the metrics cell
    assert text.count('---------------') >= 6  # 2 samples each from SFT, PPO and DPO
    # nothing was written into the repository
    assert (sorted(os.listdir(ROOT)), sorted(os.listdir(os.path.join(ROOT, 'data', 'hh_rlhf')))) == repo_before
