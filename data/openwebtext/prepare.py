"""
OpenWebText in GPT-2 BPE tokens: train.bin (~9B tokens, ~17GB) and val.bin (~4M tokens), uint16.

    python data/openwebtext/prepare.py --num_proc 8                # from the Hugging Face hub
    python data/openwebtext/prepare.py --input docs.jsonl          # a local file instead

The hub's Skylion007/openwebtext has shipped a loading script, which datasets >= 4 refuses ("Dataset
scripts are no longer supported"; karpathy/nanoGPT#633): then this stops with one line naming the ways
round it (--dataset for a script-free copy, --revision refs/convert/parquet, datasets < 4, --input).

As karpathy/nanoGPT's data/openwebtext/prepare.py: 0.05% of documents go to val (seed 2357),
each document is encode_ordinary + <|endoftext|> (50256), and the ids are written in shards
into a uint16 memmap so the whole set never sits in memory. --input takes JSON lines with a
"text" field (.jsonl) or plain text with documents separated by blank lines (anything else).
"""

import argparse
import json
import os
import sys

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument('--input', help='local .jsonl ({"text": ...} a line) or .txt (blank-line separated)')
parser.add_argument('--num_proc', type=int, default=8, help='worker processes for download and tokenizing')
parser.add_argument('--dataset', default='Skylion007/openwebtext', help='the hub dataset (its train split)')
parser.add_argument('--revision', default=None, help="the hub revision, e.g. refs/convert/parquet (the hub's "
                    "parquet export: check that it holds all ~8M documents)")
parser.add_argument('--out_dir', default=os.path.dirname(os.path.abspath(__file__)), help='where the .bin go')
parser.error = lambda msg: sys.exit(f"error: {msg}")  # one line, not usage + message
args = parser.parse_args()
if args.input and not os.path.isfile(args.input):  # before the slow imports
    sys.exit(f"error: {args.input} not found")

import numpy as np  # noqa: E402
import tiktoken  # noqa: E402
from datasets import Dataset, load_dataset  # noqa: E402
from tqdm import tqdm  # noqa: E402

# --- the documents: the hub's 8M (~54GB in the HF cache), or a local file
if args.input is None:
    try:
        dataset = load_dataset(args.dataset, revision=args.revision, num_proc=args.num_proc)['train']
    except RuntimeError as e:
        if 'scripts are no longer supported' not in str(e):
            raise
        sys.exit(f"error: {args.dataset} has a loading script, which datasets >= 4 refuses: pass --dataset with a "
                 f"script-free copy, or --revision refs/convert/parquet (check it holds all ~8M documents), or "
                 f"pip install 'datasets<4' for this step, or --input with a local file")
else:
    with open(args.input, encoding='utf-8') as f:
        if args.input.endswith('.jsonl'):
            docs = []
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:  # json.JSONDecodeError is a ValueError; one line naming the file and line, as hh_rlhf's
                    doc = json.loads(line)['text']
                    if not isinstance(doc, str):
                        raise ValueError('"text" must be a string')
                except (ValueError, KeyError, TypeError) as e:
                    sys.exit(f"error: {args.input}:{lineno}: {f'missing key {e}' if isinstance(e, KeyError) else e}")
                docs.append(doc)
        else:
            docs = [d.strip() for d in f.read().split('\n\n') if d.strip()]
    if len(docs) < 2:
        sys.exit(f"error: {args.input}: {len(docs)} document(s); a train and a val split need at least 2")
    dataset = Dataset.from_dict({'text': docs})
# owt has only a train split; test_size rounds up, so a file of 2+ documents gets one val document
split_dataset = dataset.train_test_split(test_size=0.0005, seed=2357, shuffle=True)
split_dataset['val'] = split_dataset.pop('test')

# --- tokenize: the eot token ends every document, so training sees document boundaries
enc = tiktoken.get_encoding('gpt2')


def process(example):
    ids = enc.encode_ordinary(example['text'])  # ignores special tokens written in the text
    ids.append(enc.eot_token)
    return {'ids': ids, 'len': len(ids)}


tokenized = split_dataset.map(process, remove_columns=['text'], desc='tokenizing', num_proc=args.num_proc)

# --- write each split into one memmap, a contiguous shard of documents at a time
os.makedirs(args.out_dir, exist_ok=True)
for split, dset in tokenized.items():
    arr_len = np.sum(dset['len'], dtype=np.uint64)
    filename = os.path.join(args.out_dir, f'{split}.bin')
    arr = np.memmap(filename, dtype=np.uint16, mode='w+', shape=(arr_len,))  # max id 50256 < 2**16
    total_batches = min(1024, len(dset))  # no empty shards for a small file
    idx = 0
    for batch_idx in tqdm(range(total_batches), desc=f'writing {filename}'):
        batch = dset.shard(num_shards=total_batches, index=batch_idx, contiguous=True).with_format('numpy')
        arr_batch = np.concatenate(batch['ids'])
        arr[idx:idx + len(arr_batch)] = arr_batch
        idx += len(arr_batch)
    arr.flush()
    print(f"{split} has {arr_len:,} tokens")
