#!/usr/bin/env python3
"""TEST-ONLY stand-in for tools/train/tokenize (the runtime's CLIP tokenizer), NOT a tokenizer.

It maps each whitespace/punctuation-separated word to a stable hashed id so that the data and
training pipeline can be exercised before package diffusion/tokenizer exists. Ids made with it
are meaningless to any real CLIP model: never train a model to ship with it.
Same I/O contract: captions one per line on stdin, one JSON array of 77 ids per line on stdout.
"""

import hashlib
import json
import re
import sys

BOS, EOS = 49406, 49407

for line in sys.stdin.read().split("\n")[:-1]:
    words = re.findall(r"[a-z0-9]+|[^\sa-z0-9]", line.lower())
    ids = [1000 + int(hashlib.sha1(w.encode()).hexdigest(), 16) % 48000 for w in words][:75]
    ids = [BOS] + ids + [EOS]
    print(json.dumps(ids + [EOS] * (77 - len(ids))))
