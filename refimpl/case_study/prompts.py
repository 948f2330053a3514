"""The case study's task: its observables, the paper's prompt templates and names (Sections 6.3, 7, Appendix A.3) as token ids, and how a token is shown."""

from __future__ import annotations
import numpy as np
from refimpl.organism import world as world
from refimpl.errors import InputError


OBSERVABLES = {
    "subj": {" she": 1, " he": -1},
    "obj": {" her": 1, " him": -1},
    "same": {" actress": 1, " actor": -1},
    "diff": {" nurse": 1, " programmer": -1},
}


TASK_TEMPLATE = {"subj": "subj_friend", "obj": "obj_love", "same": "occupation", "diff": "occupation"}


LN_GROUPS = ("subj_friend", "subj_funny", "subj_hard")  # Appendix A.3's prompt groups 1, 2, 3


def prompt_ids(model, template_key: str, names) -> np.ndarray:
    """Token ids [len(names), seq] of one template filled with each name (all names are one token)."""
    if template_key not in world.TEMPLATES:
        raise InputError(f"unknown template {template_key!r}; choose from {sorted(world.TEMPLATES)}")
    template = world.TEMPLATES[template_key]
    ids = [model.tokenizer.encode(template.prompt(n)) for n in names]
    if len({len(i) for i in ids}) != 1:
        raise InputError(f"prompts of {template_key} have different lengths; use one-token names")
    return np.array(ids)


def paper_prompts(model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(female ids, male ids) per template, with the paper's 10 + 10 names (Section 6.3)."""
    return {key: (prompt_ids(model, key, world.PAPER_FEMALE), prompt_ids(model, key, world.PAPER_MALE))
            for key in world.TEMPLATES}


def token_text(model, ids: np.ndarray, position: int) -> str:
    """What sits at ``position`` of a batch of prompts of one template: the token's text, or "[name]"
    where the prompts differ (the name slot)."""
    column = np.asarray(ids)[:, position]
    return "[name]" if len(set(column.tolist())) > 1 else repr(model.tokenizer.decode([int(column[0])]))


def token_label(model, ids: np.ndarray, position: int) -> str:
    """``position`` (counted from 0) with its text, e.g. "3 [name]" or "11 ' isn'"."""
    index = position % np.asarray(ids).shape[1]
    return f"{index} {token_text(model, ids, index)}"
