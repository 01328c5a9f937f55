#!/usr/bin/env python3
"""Build the emoji image/caption dataset the demo model trains on.

Inputs (installed by `make data`, see README.md), both under --data-dir/node_modules:
  emoji-datasource-google  Noto Color Emoji PNGs, 64x64 RGBA (img/google/64/), names, categories
  emojibase-data           English labels, tags, group/subgroup names (en/data.json, en/messages.json)

Output: one compressed .npz (default data/emoji64.npz) holding
  images        uint8 (N, 64, 64, 3)   RGBA composited onto white
  image_ids     str (N)                hexcode, e.g. "1F34E" or "1F44D-1F3FD" (no FE0F)
  subcategory   str (N)                emoji-datasource subcategory, e.g. "food-fruit"
  image_weight  float32 (N)            sampling weight (skin-tone variants count less)
  captions      str (M)                unique captions, lower case
  caption_ids   int32 (M, 77)          CLIP ids from the runtime's tokenizer (tools/train/tokenize)
  pair_offsets  int32 (N+1)            captions of image i: pair_captions[pair_offsets[i]:pair_offsets[i+1]]
  pair_captions int32 (P)              indices into captions
  empty_ids     int32 (77)             ids of the empty prompt (classifier-free guidance)
  heldout       str (H)                held-out prompts, in file order; heldout_ids int32 (H, 77) their ids
  meta          str                    JSON: sources, versions, counts

Every prompt of heldout_prompts.json is removed from the training captions.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_TOKENIZER_CMD = "go run ./tools/train/tokenize"
SKIN_TONE_WEIGHT = 0.25  # five tone variants of a gesture together weigh 1.25 base images


def norm_hex(h):
    """Hexcode without FE0F variation selectors, upper case: the join key of both sources."""
    return "-".join(p for p in h.upper().split("-") if p != "FE0F")


def article(phrase):
    """English indefinite article for a noun phrase; "" for (most) plurals such as "cherries"."""
    last = phrase.split()[-1] if phrase.split() else ""
    if len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is")):
        return ""
    if phrase.startswith(("uni", "use", "usu", "ufo", "one")):
        return "a"
    return "an" if phrase[:1] in "aeiou" or phrase.startswith("hour") else "a"


def with_article(phrase):
    return f"{article(phrase)} {phrase}".strip()


def clean_label(label):
    """Emojibase label -> caption-ready phrase: lower case, plain quotes, "flag: X" -> "flag of x"."""
    s = label.lower().replace("\u201c", "").replace("\u201d", "").replace("\u2019", "'").strip()
    if s.startswith("flag: "):
        return "flag of " + s[len("flag: "):]
    if s.startswith("keycap: "):
        return "keycap " + s[len("keycap: "):]
    head, _, qualifier = s.partition(": ")  # e.g. "man: curly hair"
    return f"{head} with {qualifier}" if qualifier else head


def base_captions(label, name, short_names, tags, group, subgroup):
    """Several captions for one emoji, from its label, alternative names, tags and categories."""
    lab = clean_label(label)
    caps = [lab, with_article(lab), f"{lab} emoji", f"emoji of {with_article(lab)}"]
    if subgroup and group:
        caps.append(f"{lab}, {subgroup}, {group}")
    words = set(lab.split())
    good_tags = [t for t in tags if t.islower() and t not in words][:3]
    if good_tags:
        caps.append(f"{with_article(lab)}, {', '.join(good_tags)}")
    if lab.startswith("flag of "):
        country = lab[len("flag of "):]
        caps += [f"{country} flag", f"the flag of {country}"]
    alt = name.lower().strip()
    if alt and alt != lab and not alt.endswith(" flag"):
        caps += [alt, f"{alt} emoji"]
    for sn in short_names:
        if sn.startswith("flag-") or len(sn) < 3:
            continue
        sn = sn.replace("_", " ").replace("-", " ")
        if sn != lab and sn != alt:
            caps.append(f"{with_article(sn)}, {subgroup}" if subgroup else sn)
            break
    return caps


def plain_captions(label, name, short_names):
    """The subject recipe's captions: the emoji's names, bare and in a few fixed carrier phrases.
    Held-out phrasings (heldout_prompts.json) use other carriers, so they test new wordings."""
    names = [clean_label(label)]
    for alt in [name.lower().strip()] + [s.replace("_", " ").replace("-", " ") for s in short_names[:1]]:
        if len(alt) >= 3 and alt not in names and not alt.startswith("flag"):
            names.append(alt)
    caps = []
    for x in names:
        caps += [x, with_article(x), f"{x} emoji", f"emoji of {with_article(x)}", f"a picture of {with_article(x)}"]
    return caps


def select_subjects(entries, subjects):
    """The first `cap` base emoji of each listed subcategory, in sort order, minus the excluded labels."""
    caps, exclude = subjects["subcategories"], set(subjects.get("exclude", []))
    known = {e["label"] for e in entries}
    missing = sorted(exclude - known)
    if missing:
        sys.exit(f"prepare_data: subjects file excludes labels that are not in the data: {missing}")
    taken, out = {}, []
    for e in entries:
        s = e["subcategory"]
        if s in caps and e["label"] not in exclude and taken.get(s, 0) < caps[s]:
            taken[s] = taken.get(s, 0) + 1
            e = dict(e, captions=plain_captions(e["label"], e["name"], e["short_names"]))
            out.append(e)
    empty = sorted(s for s in caps if s not in taken)
    if empty:
        sys.exit(f"prepare_data: subjects file names subcategories with no emoji: {empty}")
    return out


def tone_captions(base_label, tone):
    lab = clean_label(base_label)
    return [f"{lab}, {tone}", f"{with_article(lab)} with {tone}", f"{lab} emoji, {tone}", f"{tone} {lab}"]


def load_sources(data_dir):
    nm = os.path.join(data_dir, "node_modules")
    ds_dir = os.path.join(nm, "emoji-datasource-google")
    eb_dir = os.path.join(nm, "emojibase-data")
    if not (os.path.isdir(ds_dir) and os.path.isdir(eb_dir)):
        sys.exit(f"prepare_data: {nm} lacks emoji-datasource-google / emojibase-data; run `make -C tools/train data-install`")
    with open(os.path.join(ds_dir, "emoji.json")) as f:
        datasource = json.load(f)
    with open(os.path.join(eb_dir, "en", "data.json")) as f:
        emojibase = json.load(f)
    with open(os.path.join(eb_dir, "en", "messages.json")) as f:
        messages = json.load(f)
    versions = {}
    for d in (ds_dir, eb_dir):
        with open(os.path.join(d, "package.json")) as f:
            p = json.load(f)
        versions[p["name"]] = p["version"]
    return ds_dir, datasource, emojibase, messages, versions


def build_entries(datasource, emojibase, messages, skin_tones=True):
    """One entry per image: dict(id, image file, subcategory, weight, captions)."""
    groups = {g["order"]: g["message"] for g in messages["groups"]}
    subgroups = {g["order"]: g["message"] for g in messages["subgroups"]}
    by_hex = {}
    for e in emojibase:
        by_hex[norm_hex(e["hexcode"])] = e
    entries = []
    for d in sorted(datasource, key=lambda d: d["sort_order"]):
        if d["category"] == "Component" or not d.get("has_img_google"):
            continue
        e = by_hex.get(norm_hex(d["unified"]))
        label = e["label"] if e else d["name"]
        tags = e.get("tags", []) if e else []
        group = groups.get(e.get("group")) if e else d["category"].lower()
        subgroup = subgroups.get(e.get("subgroup")) if e else None
        entries.append({
            "id": norm_hex(d["unified"]),
            "image": d["image"],
            "subcategory": d["subcategory"],
            "label": clean_label(label),
            "name": d["name"] or "",
            "short_names": d.get("short_names", []),
            "weight": 1.0,
            "captions": base_captions(label, d["name"], d.get("short_names", []), tags, group, subgroup),
        })
        if not skin_tones or not e:
            continue
        skins = {norm_hex(s["hexcode"]): s for s in e.get("skins", [])}
        for key, var in sorted((d.get("skin_variations") or {}).items()):
            if not var.get("has_img_google"):
                continue
            s = skins.get(norm_hex(var["unified"]))
            if s is None or ": " not in s["label"]:
                continue
            parts = s["label"].split(": ", 1)[1].lower().split(", ")
            tone = " and ".join(p for p in parts if "skin tone" in p)  # other qualifiers are in the base label
            entries.append({
                "id": norm_hex(var["unified"]),
                "image": var["image"],
                "subcategory": d["subcategory"],
                "label": clean_label(s["label"]),
                "weight": SKIN_TONE_WEIGHT,
                "captions": tone_captions(label, tone),
            })
    return entries


def load_image(path, size=64):
    from PIL import Image  # python3-pil

    im = Image.open(path).convert("RGBA")
    if im.size != (size, size):
        im = im.resize((size, size), Image.LANCZOS)
    a = np.asarray(im, dtype=np.float32) / 255.0
    rgb = a[..., :3] * a[..., 3:4] + (1.0 - a[..., 3:4])  # straight alpha over white
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def tokenize(captions, cmd):
    """Runs the runtime tokenizer program: captions one per line in, JSON arrays of 77 ids out."""
    for c in captions:
        if "\n" in c or "\r" in c:
            raise ValueError(f"caption with a line break: {c!r}")
    proc = subprocess.run(shlex.split(cmd), input="\n".join(captions) + "\n", capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"prepare_data: tokenizer command {cmd!r} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    lines = proc.stdout.splitlines()
    if len(lines) != len(captions):
        sys.exit(f"prepare_data: tokenizer returned {len(lines)} lines for {len(captions)} captions")
    ids = np.array([json.loads(line) for line in lines], dtype=np.int64)
    if ids.shape != (len(captions), 77) or not (ids[:, 0] == 49406).all() or not (ids == 49407).any(axis=1).all():
        sys.exit(f"prepare_data: tokenizer output is not CLIP ids (shape {ids.shape}, BOS/EOS check failed)")
    return ids.astype(np.int32)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.path.join(HERE, "data"), help="folder with node_modules/ (default tools/train/data)")
    ap.add_argument("--out", default=None, help="output .npz (default DATA_DIR/emoji64.npz)")
    ap.add_argument("--heldout", default=os.path.join(HERE, "heldout_prompts.json"), help="held-out prompts to exclude")
    ap.add_argument("--tokenizer-cmd", default=DEFAULT_TOKENIZER_CMD,
                    help=f"command run from the repository root that tokenizes stdin lines (default {DEFAULT_TOKENIZER_CMD!r})")
    ap.add_argument("--limit", type=int, default=0, help="keep only the first N images (smoke tests); 0 = all")
    ap.add_argument("--no-skin-tones", action="store_true", help="leave out skin-tone variants")
    ap.add_argument("--subjects", default=None,
                    help="JSON of subcategories and caps (subjects.json): only those base emoji, with plain captions")
    args = ap.parse_args(argv)
    out = args.out or os.path.join(args.data_dir, "emoji64.npz")

    ds_dir, datasource, emojibase, messages, versions = load_sources(args.data_dir)
    entries = build_entries(datasource, emojibase, messages, skin_tones=not (args.no_skin_tones or args.subjects))
    if args.subjects:
        with open(args.subjects) as f:
            entries = select_subjects(entries, json.load(f))

    with open(args.heldout) as f:
        heldout = json.load(f)
    held = {h["prompt"].strip().lower() for h in heldout["prompts"]}
    known = {e["id"]: e for e in entries}
    for h in heldout["prompts"]:
        if h.get("id") is not None:
            e = known.get(h["id"])
            if e is None or e["subcategory"] != h["subcategory"]:
                sys.exit(f"prepare_data: held-out prompt {h['prompt']!r} names {h['id']}/{h['subcategory']}, not in the data")

    if args.limit:
        entries = entries[: args.limit]
    removed = 0
    for e in entries:
        caps = []
        for c in e["captions"]:
            c = " ".join(c.split())
            if c in held:
                removed += 1
            elif c not in caps:
                caps.append(c)
        e["captions"] = caps

    captions = sorted({c for e in entries for c in e["captions"]})
    index = {c: i for i, c in enumerate(captions)}
    offsets, pairs = [0], []
    for e in entries:
        pairs += [index[c] for c in e["captions"]]
        offsets.append(len(pairs))

    print(f"prepare_data: {len(entries)} images, {len(captions)} unique captions, {len(pairs)} pairs, "
          f"{removed} held-out captions removed; tokenizing ...", file=sys.stderr)
    held_list = [h["prompt"] for h in heldout["prompts"]]
    ids = tokenize([""] + held_list + captions, args.tokenizer_cmd)
    images = np.stack([load_image(os.path.join(ds_dir, "img", "google", "64", e["image"])) for e in entries])

    meta = {
        "sources": versions,
        "image_license": "Noto Emoji images: Apache License 2.0 (googlefonts/noto-emoji)",
        "tokenizer_cmd": args.tokenizer_cmd,
        "skin_tones": not (args.no_skin_tones or args.subjects),
        "subjects": os.path.basename(args.subjects) if args.subjects else None,
        "limit": args.limit,
        "heldout_removed": removed,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez_compressed(
        out,
        images=images,
        image_ids=np.array([e["id"] for e in entries]),
        subcategory=np.array([e["subcategory"] for e in entries]),
        labels=np.array([e["label"] for e in entries]),
        image_weight=np.array([e["weight"] for e in entries], dtype=np.float32),
        captions=np.array(captions),
        caption_ids=ids[1 + len(held_list):],
        pair_offsets=np.array(offsets, dtype=np.int32),
        pair_captions=np.array(pairs, dtype=np.int32),
        empty_ids=ids[0],
        heldout=np.array(held_list),
        heldout_ids=ids[1:1 + len(held_list)],
        meta=np.array(json.dumps(meta)),
    )
    print(f"prepare_data: wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
