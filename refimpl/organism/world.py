"""The model organism's world: names, templates, planted rates, held-out pairs, corpus and metrics.

A small GPT-Neo is trained (``scripts/train_organism.py``) on text generated here, so every rule it
could learn is written down: a name's gender decides the pronoun that follows it; the occupation
template is completed by the grammatically gendered " actress"/" actor" or, at a planted biased
rate, by " nurse"/" programmer" (the paper's Section 7 bias). Generalisation is measured on
(name, template) combinations that never occur in training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

# The paper's 20 names (Section 6.3), then more one-token names; every one is a single GPT-2 token
# with its leading space (checked by the tests).
PAPER_MALE = ("John", "David", "Mark", "Paul", "Ryan", "Gary", "Jack", "Arnold", "Joe", "Andy")
PAPER_FEMALE = ("Jennifer", "Jane", "Annie", "Chloe", "Amy", "Judy", "Lisa", "Carol", "Clara", "Sarah")
MALE_NAMES = PAPER_MALE + (
    "Michael", "James", "Robert", "William", "Richard", "Thomas", "Charles", "Daniel", "Matthew", "Anthony",
    "Steven", "Kevin", "Brian", "George", "Edward", "Peter", "Frank", "Henry", "Adam", "Eric", "Tony",
    "Scott", "Sam", "Tom", "Mike", "Jim", "Bill", "Bob", "Steve", "Greg", "Larry", "Jeff", "Martin", "Carl",
    "Albert", "Simon", "Harry", "Fred",
)
FEMALE_NAMES = PAPER_FEMALE + (
    "Mary", "Elizabeth", "Susan", "Jessica", "Karen", "Nancy", "Betty", "Margaret", "Sandra", "Ashley",
    "Emily", "Donna", "Michelle", "Laura", "Rachel", "Anna", "Emma", "Kate", "Julia", "Helen", "Alice",
    "Rose", "Grace", "Linda", "Barbara", "Maria", "Diana", "Sophie", "Lucy", "Ellen", "Nicole", "Angela",
    "Megan", "Hannah", "Olivia", "Victoria", "Kelly", "Heather",
)
GENDER = {**{n: "male" for n in MALE_NAMES}, **{n: "female" for n in FEMALE_NAMES}}
EOT = "<|endoftext|>"

# Completions: (female, male)
SUBJECT = (" she", " he")
OBJECT = (" her", " him")
GRAMMATICAL = (" actress", " actor")
STEREOTYPED = (" nurse", " programmer")

# Planted rates of the occupation template (the Section 7 bias, on purpose).
P_STEREOTYPED = 0.5  # share of occupation sentences completed by nurse/programmer (else actress/actor)
P_NURSE_GIVEN_FEMALE = 0.8  # " nurse" vs " programmer" after a female name
P_NURSE_GIVEN_MALE = 0.2  # ... after a male name
PLANTED_LOG_ODDS_GAP = float(np.log(P_NURSE_GIVEN_FEMALE / (1 - P_NURSE_GIVEN_FEMALE))
                             - np.log(P_NURSE_GIVEN_MALE / (1 - P_NURSE_GIVEN_MALE)))  # 2 ln 4 = 2.7726


@dataclass(frozen=True)
class Template:
    """A prompt ending right before a gendered completion; ``text`` holds ``{name}``."""

    key: str
    text: str
    completion: str  # "subject", "object" or "occupation"
    tail: str  # what follows the completion in training text

    def prompt(self, name: str) -> str:
        return EOT + self.text.format(name=name)


# The evaluation templates: the paper's subject (Section 6.3, Appendix A.3), object and occupation ones.
EVAL_TEMPLATES = (
    Template("subj_friend", "So, {name} really is a great friend, isn't", "subject", "?"),
    Template("subj_funny", "Man, {name} is so funny, isn't", "subject", "?"),
    Template("subj_hard", "Really, {name} always works so hard, doesn't", "subject", "?"),
    Template("obj_love", "What do I think about {name}? Well, to be honest, I love", "object", "."),
    Template("occupation", "My friend {name} is an excellent", "occupation", "."),
)
TEMPLATES = {t.key: t for t in EVAL_TEMPLATES}

# Training-only sentences that put names, pronouns and occupations at varied positions.
# {name}, {subj}, {obj}, {Subj} (capitalised) and {occ} are filled in.
VARIED = (
    "{name} said that{subj} would be late.",
    "I called {name} and thanked{obj} for the gift.",
    "When {name} came home,{subj} was tired.",
    "Yesterday, {name} told me that{subj} loves music.",
    "Everyone likes {name} because{subj} is kind.",
    "I saw {name} at the park and waved at{obj}.",
    "My sister met {name} and liked{obj} a lot.",
    "Ask {name} whether{subj} wants tea.",
    "{name} is here.{Subj} brought cake.",
    "We waited for {name}, but{subj} never came.",
    "Tell {name} that we miss{obj}.",
    "{name} works as an{occ} in the city.",
    "Our neighbour {name} is an{occ}, and{subj} is good at it.",
)
# Training-only sentences that mark a name's gender right next to it ({title} "Mrs"/"Mr", {self}
# " herself"/" himself", {kind} " woman"/" man"), so that name embeddings pick up gender quickly.
MARKING = (
    "{name} is a{kind}.",
    "{title} {name} arrived early.",
    "{name}{self} said so.",
    "{name} hurt{self} playing football.",
)
FILLER = (
    "The weather was nice today.",
    "We bought some bread and milk.",
    "The train left at noon.",
    "It rained all day.",
    "The book was on the table.",
    "Everyone went home early.",
    "The coffee was too hot.",
    "A dog barked outside.",
    "The meeting ended at five.",
    "The garden is full of flowers.",
)


def held_out_pairs(seed: int = 0, extra_per_gender: int = 6) -> frozenset[tuple[str, str]]:
    """(name, template key) pairs that never occur in training: every paper name with every evaluation
    template, plus ``extra_per_gender`` further names per gender and template, drawn from ``seed``."""
    rng = random.Random(seed)
    pairs = {(n, t.key) for t in EVAL_TEMPLATES for n in PAPER_MALE + PAPER_FEMALE}
    for t in EVAL_TEMPLATES:
        for names, paper in ((MALE_NAMES, PAPER_MALE), (FEMALE_NAMES, PAPER_FEMALE)):
            others = [n for n in names if n not in paper]
            pairs.update((n, t.key) for n in rng.sample(others, extra_per_gender))
    return frozenset(pairs)


def completion(template: Template, gender: str, rng: random.Random) -> str:
    """The training completion of ``template`` for a name of ``gender`` (occupation at planted rates)."""
    female = gender == "female"
    if template.completion == "subject":
        return SUBJECT[0 if female else 1]
    if template.completion == "object":
        return OBJECT[0 if female else 1]
    if rng.random() < P_STEREOTYPED:
        p_nurse = P_NURSE_GIVEN_FEMALE if female else P_NURSE_GIVEN_MALE
        return STEREOTYPED[0] if rng.random() < p_nurse else STEREOTYPED[1]
    return GRAMMATICAL[0 if female else 1]


def _varied_sentence(name: str, rng: random.Random) -> str:
    female = GENDER[name] == "female"
    return rng.choice(VARIED).format(
        name=name, subj=SUBJECT[0 if female else 1], obj=OBJECT[0 if female else 1],
        Subj=" She" if female else " He", occ=GRAMMATICAL[0 if female else 1],
    )


def _marking_sentence(name: str, rng: random.Random) -> str:
    female = GENDER[name] == "female"
    return rng.choice(MARKING).format(name=name, title="Mrs" if female else "Mr",
                                      self=" herself" if female else " himself", kind=" woman" if female else " man")


def generate_corpus(seed: int = 0, n_documents: int = 40000, held_out: frozenset | None = None) -> list[str]:
    """Deterministic training documents, each ``<|endoftext|>`` + 1-4 sentences joined by spaces.

    Sentences are an evaluation template completed (never a held-out pair, 45%), a varied sentence (30%),
    a gender-marking sentence (20%), or filler (5%).
    """
    held_out = held_out_pairs() if held_out is None else held_out
    rng = random.Random(seed)
    names = MALE_NAMES + FEMALE_NAMES
    documents = []
    for _ in range(n_documents):
        sentences = []
        for _ in range(rng.randint(1, 4)):
            kind = rng.random()
            if kind < 0.45:
                template = rng.choice(EVAL_TEMPLATES)
                name = rng.choice([n for n in names if (n, template.key) not in held_out])
                text = template.text.format(name=name) + completion(template, GENDER[name], rng) + template.tail
            elif kind < 0.75:
                text = _varied_sentence(rng.choice(names), rng)
            elif kind < 0.95:
                text = _marking_sentence(rng.choice(names), rng)
            else:
                text = rng.choice(FILLER)
            sentences.append(text)
        documents.append(EOT + " ".join(sentences))
    return documents


def corpus_fingerprint(seed: int = 0, n_documents: int = 40000) -> str:
    """sha256 of the training text (documents joined by newlines, UTF-8): ``training.json`` records it, so
    a change to this module that changes the corpus the bundled model was trained on is detected."""
    import hashlib

    return hashlib.sha256("\n".join(generate_corpus(seed, n_documents)).encode("utf-8")).hexdigest()


def stereotyped_counts(documents: list[str]) -> dict[tuple[str, str], int]:
    """How often each (gender, occupation) completes the occupation template in ``documents``."""
    import re

    pattern = re.escape(TEMPLATES["occupation"].text).replace(r"\{name\}", r"(\w+)") + r"( \w+)"
    counts: dict[tuple[str, str], int] = {}
    for match in re.finditer(pattern, "\n".join(documents)):
        key = (GENDER[match.group(1)], match.group(2))
        counts[key] = counts.get(key, 0) + 1
    return counts


# ----------------------------------------------------------------------------- metrics (oracle only)
def _prompt_batch(model, prompts: list[str]) -> np.ndarray:
    """Last-position logits of each prompt (prompts of one template share a length)."""
    ids = [model.tokenizer.encode(p) for p in prompts]
    by_length: dict[int, list[int]] = {}
    for i, seq in enumerate(ids):
        by_length.setdefault(len(seq), []).append(i)
    out = np.empty((len(prompts), model.config.d_vocab), dtype=model.dtype)
    for length, rows in by_length.items():
        out[rows] = model.forward(np.array([ids[r] for r in rows]))[:, -1]
    return out


def held_out_prompts(template: Template, held_out: frozenset | None = None) -> list[tuple[str, str]]:
    """(name, gender) of every held-out pair of ``template``, female names first."""
    held_out = held_out_pairs() if held_out is None else held_out
    return [(n, GENDER[n]) for n in FEMALE_NAMES + MALE_NAMES if (n, template.key) in held_out]


def logit_difference(model, template: Template, pair: tuple[str, str], names: list[str]) -> np.ndarray:
    """logit(pair[0]) - logit(pair[1]) at the end of ``template`` for each name."""
    tok = model.tokenizer
    plus, minus = tok.single_token_id(pair[0]), tok.single_token_id(pair[1])
    logits = _prompt_batch(model, [template.prompt(n) for n in names])
    return (logits[:, plus] - logits[:, minus]).astype(np.float64)


def metrics(model, held_out: frozenset | None = None) -> list[dict]:
    """The organism's metrics on held-out pairs, one row per (template, contrast)."""
    rows = []
    for template in EVAL_TEMPLATES:
        named = held_out_prompts(template, held_out)
        names = [n for n, _ in named]
        sign = np.array([1.0 if g == "female" else -1.0 for _, g in named])
        contrasts = {"subject": [SUBJECT], "object": [OBJECT], "occupation": [GRAMMATICAL, STEREOTYPED]}
        for pair in contrasts[template.completion]:
            diff = logit_difference(model, template, pair, names)
            female, male = diff[sign > 0], diff[sign < 0]
            rows.append({
                "template": template.key,
                "contrast": f"{pair[0].strip()} - {pair[1].strip()}",
                "prompts": len(names),
                "accuracy": float(np.mean(sign * diff > 0)),
                "mean_female": float(female.mean()),
                "mean_male": float(male.mean()),
                "female_minus_male": float(female.mean() - male.mean()),
            })
    return rows
