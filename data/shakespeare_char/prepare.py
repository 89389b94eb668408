"""
Tiny Shakespeare at the character level: train.bin, val.bin (uint16 ids) and meta.pkl (the vocab).

    python data/shakespeare_char/prepare.py                        # downloads input.txt once
    python data/shakespeare_char/prepare.py --input ../shared/data/tinyshakespeare/input.txt

As karpathy/nanoGPT's data/shakespeare_char/prepare.py: vocab = the sorted set of characters
(65), first 90% of the characters train, the rest val.
"""

import argparse
import os
import pickle
import sys
import urllib.request

import numpy as np

URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
HERE = os.path.dirname(os.path.abspath(__file__))  # outputs live next to the script, whatever the cwd

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument('--input', help='local text file (default: download to input.txt here)')
parser.add_argument('--out_dir', default=HERE, help='where train.bin, val.bin, meta.pkl go')
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

# --- the vocabulary: every character that occurs
chars = sorted(set(data))
vocab_size = len(chars)
print("all the unique characters:", ''.join(chars))
print(f"vocab size: {vocab_size:,}")
stoi = {ch: i for i, ch in enumerate(chars)}
itos = {i: ch for i, ch in enumerate(chars)}

# --- split by characters, encode, write
n = len(data)
train_ids = np.array([stoi[c] for c in data[:int(n * 0.9)]], dtype=np.uint16)
val_ids = np.array([stoi[c] for c in data[int(n * 0.9):]], dtype=np.uint16)
print(f"train has {len(train_ids):,} tokens")
print(f"val has {len(val_ids):,} tokens")
if len(train_ids) == 0 or len(val_ids) == 0:  # nothing written: a good dataset in out_dir stays
    sys.exit(f"error: {path}: {n:,} characters are too few for a train and a val split")
os.makedirs(args.out_dir, exist_ok=True)
train_ids.tofile(os.path.join(args.out_dir, 'train.bin'))
val_ids.tofile(os.path.join(args.out_dir, 'val.bin'))
with open(os.path.join(args.out_dir, 'meta.pkl'), 'wb') as f:
    pickle.dump({'vocab_size': vocab_size, 'itos': itos, 'stoi': stoi}, f)
print(f"wrote train.bin, val.bin, meta.pkl to {args.out_dir}")
