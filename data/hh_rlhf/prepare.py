"""
Anthropic hh-rlhf as JSON lines for SFT and preference training (reward model, DPO, PPO prompts).

    python data/hh_rlhf/prepare.py                                 # the hub, all subsets
    python data/hh_rlhf/prepare.py --subset helpful-base --max_examples 2000
    python data/hh_rlhf/prepare.py --input ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz
    python data/hh_rlhf/prepare.py --source ultrafeedback          # HuggingFaceH4/ultrafeedback_binarized

Writes sft_{train,val}.jsonl ({"prompt", "response"} a line) and pref_{train,val}.jsonl
({"prompt", "chosen", "rejected"}) to --out_dir (default: here). The prompt is the dialogue up to
and including its last "\n\nAssistant:", the responses the rest (" Sure, ..."): prompt + response
is the original text exactly. Skipped: rows without an assistant turn or with an empty last one,
preference pairs whose chosen and rejected prompts differ, and pairs where one answer itself holds a
'\n\nAssistant:' (a few hh-rlhf pairs: the split would cut that answer; for SFT only when it is the
chosen one). The hub's train/test splits are train/val; a local file is split by --val_fraction.
Rows are shuffled (--seed) before --max_examples takes the first N, and the output keeps that order.
If any of the four files would be empty (an empty file, no usable rows, a val split of 0 rows), it stops in
one line and writes nothing, so a good dataset already in --out_dir stays.
"""

import argparse
import gzip
import json
import os
import random
import sys
from collections import Counter

HUMAN, ASSISTANT = '\n\nHuman:', '\n\nAssistant:'
NO_TURN = 'no/empty assistant turn'
TAG_IN_ANSWER = "an answer holds '\\n\\nAssistant:'"
ROLE_PREFIX = {'system': '', 'user': HUMAN + ' ', 'assistant': ASSISTANT + ' '}  # system text goes first, as is


def split_dialogue(text):
    """(prompt up to and including the last '\\n\\nAssistant:', the rest), or None if there is no
    assistant turn or the last one is empty."""
    i = text.rfind(ASSISTANT)
    if i < 0 or not text[i + len(ASSISTANT):].strip():
        return None
    i += len(ASSISTANT)
    return text[:i], text[i:]


def render_messages(messages):
    """[{'role', 'content'}] -> hh-rlhf's plain-text chat format ('\\n\\nHuman: ...\\n\\nAssistant: ...')."""
    return ''.join(ROLE_PREFIX[m['role']] + m['content'] for m in messages)


def ultrafeedback_row(row):
    """An ultrafeedback_binarized row (chosen/rejected message lists) -> an hh-rlhf row."""
    return {'chosen': render_messages(row['chosen']), 'rejected': render_messages(row['rejected'])}


# source -> (hub id, train split, val split, row converter to hh-rlhf's {'chosen', 'rejected'} texts)
SOURCES = {'hh': ('Anthropic/hh-rlhf', 'train', 'test', lambda row: row),
           'ultrafeedback': ('HuggingFaceH4/ultrafeedback_binarized', 'train_prefs', 'test_prefs', ultrafeedback_row)}


def convert(rows):
    """hh-rlhf rows -> (sft records, pref records, {'sft': Counter, 'pref': Counter} of skipped rows by reason)."""
    sft, pref, skipped = [], [], {'sft': Counter(), 'pref': Counter()}
    for row in rows:
        c, r = split_dialogue(row['chosen']), split_dialogue(row['rejected'])
        # one prompt a proper prefix of the other: that side's answer itself holds a '\n\nAssistant:' (a turn
        # the answer made up), so its last one is inside the answer and split_dialogue cut the answer there
        tag_in = None if c is None or r is None or c[0] == r[0] else \
            'chosen' if c[0].startswith(r[0]) else 'rejected' if r[0].startswith(c[0]) else None
        if c is None:
            skipped['sft'][NO_TURN] += 1
        elif tag_in == 'chosen':  # its prompt would hold the start of the answer, its response only the tail
            skipped['sft'][TAG_IN_ANSWER] += 1
        else:
            sft.append({'prompt': c[0], 'response': c[1]})
        if c is None or r is None:
            skipped['pref'][NO_TURN] += 1
        elif tag_in:
            skipped['pref'][TAG_IN_ANSWER] += 1
        elif c[0] != r[0]:  # a preference is only meaningful between two answers to the same prompt
            skipped['pref']['prompts differ'] += 1
        else:
            pref.append({'prompt': c[0], 'chosen': c[1], 'rejected': r[1]})
    return sft, pref, skipped


def read_jsonl(path, to_hh):
    """hh-rlhf rows from a .jsonl or .jsonl.gz file; a bad line stops with 'error: FILE:LINE: ...'."""
    rows = []
    try:
        with (gzip.open if path.endswith('.gz') else open)(path, 'rt', encoding='utf-8') as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:  # json.JSONDecodeError is a ValueError
                    row = to_hh(json.loads(line))
                    if not (isinstance(row['chosen'], str) and isinstance(row['rejected'], str)):
                        raise ValueError('"chosen" and "rejected" must be strings')
                except (ValueError, KeyError, TypeError) as e:
                    sys.exit(f"error: {path}:{lineno}: {f'missing key {e}' if isinstance(e, KeyError) else e}")
                rows.append(row)
    except (OSError, EOFError, UnicodeDecodeError) as e:  # a .gz that is not gzip or is cut short, not UTF-8
        sys.exit(f"error: {path}: cannot read it: {e}")  # no line: the file is read in blocks
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--input', help='local hh-rlhf .jsonl or .jsonl.gz (default: the hub)')
    parser.add_argument('--source', default='hh', choices=list(SOURCES), help='data set and row format')
    parser.add_argument('--subset', help='hub hh-rlhf subset, e.g. harmless-base, helpful-base (default: all)')
    parser.add_argument('--val_fraction', type=float, default=0.1, help='share of a local file for val')
    parser.add_argument('--seed', type=int, default=1337, help='shuffle seed')
    parser.add_argument('--max_examples', type=int, default=0, help='use at most N rows, of each hub split (0 = all)')
    parser.add_argument('--out_dir', default=os.path.dirname(os.path.abspath(__file__)), help='where the .jsonl go')
    parser.error = lambda msg: sys.exit(f"error: {msg}")  # one line, not usage + message
    args = parser.parse_args()
    if not 0 < args.val_fraction < 1:  # 0 would write an empty val split
        parser.error(f"--val_fraction must be in (0, 1), got {args.val_fraction}")
    if args.subset and args.source != 'hh':
        parser.error("--subset is for --source hh")
    if args.max_examples < 0:
        parser.error(f"--max_examples must be >= 0, got {args.max_examples}")
    hub_id, train_split, val_split, to_hh = SOURCES[args.source]
    rng = random.Random(args.seed)
    cap = args.max_examples or None

    # --- the rows, as hh-rlhf {'chosen', 'rejected'} dialogues: a local file split here, or the hub's splits
    if args.input:
        if not os.path.isfile(args.input):
            sys.exit(f"error: {args.input} not found")
        rows = read_jsonl(args.input, to_hh)
        rng.shuffle(rows)
        rows = rows[:cap]
        n_val = round(len(rows) * args.val_fraction)
        splits = {'train': rows[n_val:], 'val': rows[:n_val]}
    else:
        from datasets import load_dataset  # heavy, and only needed here; HF_ENDPOINT mirrors work
        dataset = load_dataset(hub_id, data_dir=args.subset or None)
        splits = {}
        for split, hub_split in (('train', train_split), ('val', val_split)):
            rows = dataset[hub_split].to_list()
            rng.shuffle(rows)  # hh-rlhf's splits are its subsets one after another
            splits[split] = [to_hh(row) for row in rows[:cap]]

    # --- convert; an empty file would be no dataset, so stop first: nothing written, a good dataset in out_dir stays
    converted = {split: convert(rows) for split, rows in splits.items()}
    source = args.input or hub_id + (f' {args.subset}' if args.subset else '')
    for split, (sft, pref, skipped) in converted.items():
        for kind, records in (('sft', sft), ('pref', pref)):
            if records:
                continue
            if split == 'val' and not splits['val'] and args.input:
                sys.exit(f"error: {source}: --val_fraction {args.val_fraction} of {len(splits['train']):,} rows "
                         f"leaves none for val: pass a larger --val_fraction or a bigger file (nothing written)")
            why = ', '.join(f"{reason}: {n:,}" for reason, n in sorted(skipped[kind].items()))
            sys.exit(f"error: {source}: {kind}_{split}.jsonl would be empty: {len(splits[split]):,} rows, "
                     f"{sum(skipped[kind].values()):,} skipped{f' ({why})' if why else ''} (nothing written)")

    # --- write every file to .tmp, then rename them all, so a crash leaves no half files
    os.makedirs(args.out_dir, exist_ok=True)
    paths = []
    for split, (sft, pref, skipped) in converted.items():
        for kind, records in (('sft', sft), ('pref', pref)):
            path = os.path.join(args.out_dir, f'{kind}_{split}.jsonl')
            with open(path + '.tmp', 'w', encoding='utf-8') as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + '\n' for r in records)
            paths.append(path)
            why = ', '.join(f"{reason}: {n:,}" for reason, n in sorted(skipped[kind].items()))
            print(f"{kind}_{split}.jsonl: {len(records):,} written, {sum(skipped[kind].values()):,} skipped"
                  + (f" ({why})" if why else ''))
    for path in paths:
        os.replace(path + '.tmp', path)
    print(f"wrote {len(paths)} files to {args.out_dir}")


if __name__ == '__main__':
    main()
