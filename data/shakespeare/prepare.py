"""
Tiny Shakespeare in GPT-2 BPE tokens: train.bin and val.bin (uint16 ids), for finetuning GPT-2.

    python data/shakespeare/prepare.py                             # downloads input.txt once
    python data/shakespeare/prepare.py --input ../shared/data/tinyshakespeare/input.txt

As karpathy/nanoGPT's data/shakespeare/prepare.py: the first 90% of the characters train, the
rest val, each encoded with tiktoken's gpt2 encode_ordinary (special tokens are plain text).
No meta.pkl: GPT-2's BPE is what train.py and sample.py use when there is none.
Offline, set TIKTOKEN_CACHE_DIR to a directory holding the cached BPE files.
"""

import argparse
import os
import sys
import urllib.request

import numpy as np
import tiktoken

URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
HERE = os.path.dirname(os.path.abspath(__file__))  # outputs live next to the script, whatever the cwd

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument('--input', help='local text file (default: download to input.txt here)')
parser.add_argument('--out_dir', default=HERE, help='where train.bin and val.bin go')
parser.error = lambda msg: sys.exit(f"error: {msg}")  # one line, not usage + message
args = parser.parse_args()

# --- read the text: a given file, else input.txt here, downloaded the first time
path = args.input or os.path.join(HERE, 'input.txt')
if args.input is None and not os.path.exists(path):
    print(f"downloading {URL}")
    try:  # to a temporary name first, so an interrupted download doesn't pass for the data
        urllib.request.urlretrieve(URL, path + '.tmp')
    except OSError as e:
        sys.exit(f"error: could not download {URL}: {e}")
    os.replace(path + '.tmp', path)
if not os.path.isfile(path):
    sys.exit(f"error: {path} not found")
with open(path, encoding='utf-8') as f:
    data = f.read()
print(f"length of dataset in characters: {len(data):,}")

# --- split by characters (as nanoGPT; a token may straddle the cut), encode, write
n = len(data)
enc = tiktoken.get_encoding('gpt2')
train_ids = np.array(enc.encode_ordinary(data[:int(n * 0.9)]), dtype=np.uint16)  # ids < 50257 fit
val_ids = np.array(enc.encode_ordinary(data[int(n * 0.9):]), dtype=np.uint16)
print(f"train has {len(train_ids):,} tokens")
print(f"val has {len(val_ids):,} tokens")
if len(train_ids) == 0 or len(val_ids) == 0:  # nothing written: a good dataset in out_dir stays
    sys.exit(f"error: {path}: {n:,} characters are too few for a train and a val split")
os.makedirs(args.out_dir, exist_ok=True)
train_ids.tofile(os.path.join(args.out_dir, 'train.bin'))
val_ids.tofile(os.path.join(args.out_dir, 'val.bin'))
print(f"wrote train.bin, val.bin to {args.out_dir}")
